"""The README's results table, generated from the registry and the bench DB's peers (never typed by hand).

`python -m bench readme` prints it; `python -m bench readme --update` rewrites the block between the
`<!-- results:start -->` / `<!-- results:end -->` markers in README.md. External peers benched on the same images
(`bench.report.peer_records`) sit beside the registry's models.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from zoo.modes import REGISTRY_MODES, metrics_key
from zoo.paths import REPO
from zoo.registry import list_runs
from zoo.runs import RunRecord



# Table order: the models people compare first, then the default zoo's sections in the sweep file's order.
SECTIONS = ("headline", "ensemble", "peer", "superseded", "formulation", "ensemble_member", "pretrained", "backbone",
            "augment", "train_fraction", "age_balance", "gender_balance", "tasks", "dropout", "synth_study")


@dataclass(frozen=True)
class Entry:
    """One table row's source: a registered run (`from_run`) or an external peer's record (`from_peer`, the dicts
    of `bench.report.peer_records`), so the table never reads one like the other."""
    id: str
    name: str
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    dataset: str = "utkface"  # the dataset its metrics are on (an adapted run's target)
    params: int | None = None
    infer_img_s: float | None = None
    peer: bool = False

    @classmethod
    def from_run(cls, run: RunRecord) -> Entry:
        return cls(run.id, run.display_name, run.config, run.metrics, run.adapted_to or run.data.get("dataset")
                   or "utkface", run.params, run.infer_img_s)

    @classmethod
    def from_peer(cls, peer: dict) -> Entry:
        pid = str(peer.get("id") or "")
        return cls(pid, str(peer.get("name") or pid), dict(peer.get("config") or {}),
                   dict(peer.get("metrics") or {}), peer=True)

    @property
    def section(self) -> str:
        if self.peer or self.config.get("backbone") == "external":
            return "peer"
        return "headline" if self.name.startswith("headline") else self.name.split("/")[0]


# The inference mode of each column that depends on one (zoo.modes): the dashboard's leaderboard in that mode shows
# the same numbers (tests/bench/test_bench_modes.py). The other metric columns are those of `plain`.
MODE_COLUMNS = {"MAE": "plain", "MAE (flip TTA)": "flip", "MAE (flip+crop TTA)": "flip+crop"}


def results_frame(split: str = "test", peers: list[dict] | None = None) -> pd.DataFrame:
    """One row per registered model (plus peers given as {name, metrics}) on `split` (UTKFace committed split),
    grouped by section (headline models, ensembles, peers, then each sweep section), by MAE within a section.
    Each mode's columns come from that mode's metrics only (`zoo.modes.metrics_key`): a model without metrics in
    a mode shows none there, never another mode's."""
    rows = []
    for r in [Entry.from_run(run) for run in list_runs()] + [Entry.from_peer(p) for p in peers or []]:
        by_mode = {md: r.metrics.get(metrics_key(md, split)) or {} for md in REGISTRY_MODES}
        m, flip, crop = (by_mode[md] for md in REGISTRY_MODES)
        if not any(by_mode.values()) or r.dataset != "utkface":
            continue  # evaluated on another dataset (AdaBN to it): the Generalization page shows those
        cfg = r.config
        sec = r.section
        rows.append({
            "order": SECTIONS.index(sec) if sec in SECTIONS else len(SECTIONS),
            "model": r.name, "id": r.id, "backbone": cfg.get("backbone", ""),
            "formulation": cfg.get("formulation", ""), "px": cfg.get("img_size"),
            "MAE": m.get("mae"), "MAE (flip TTA)": flip.get("mae"), "MAE (flip+crop TTA)": crop.get("mae"),
            "RMSE": m.get("rmse"), "CS@5": m.get("cs5"), "±10y": m.get("acc10"),
            "gender acc": m.get("gender_acc"), "gender acc (flip+crop TTA)": crop.get("gender_acc"),
            "gender F1": m.get("gender_f1"), "gender AUC": m.get("gender_auc"),
            "params (M)": r.params / 1e6 if r.params else None,
            "img/s": r.infer_img_s,
        })
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["order", "MAE"], na_position="last").drop(columns="order")


def markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_No trained models registered yet._"
    fmt = {"px": "{:.0f}", "MAE": "{:.2f}", "MAE (flip TTA)": "{:.2f}", "MAE (flip+crop TTA)": "{:.2f}",
           "RMSE": "{:.2f}", "CS@5": "{:.1%}", "±10y": "{:.1%}", "gender acc": "{:.1%}",
           "gender acc (flip+crop TTA)": "{:.1%}", "gender F1": "{:.3f}", "gender AUC": "{:.3f}", "params (M)": "{:.1f}",
           "img/s": "{:.0f}"}
    cols = ["model", "backbone", "formulation", *fmt]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append("–" if v is None or (isinstance(v, float) and pd.isna(v)) else fmt[c].format(v)
                         if c in fmt else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


START, END = "<!-- results:start -->", "<!-- results:end -->"  # the results table's block


def update_readme(table: str, readme: Path = REPO / "README.md", section: str = "results") -> None:
    """Replace the README's block between `<!-- {section}:start -->` and `<!-- {section}:end -->` with `table`."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = readme.read_text()
    if start not in text:
        raise ValueError(f"{readme} has no {start} marker")
    block = f"{start}\n{table}\n{end}"
    readme.write_text(re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S))


def readme_table(db: Path | None = None, split: str = "test") -> str:
    """The markdown table: the registry's models on `split`, plus the peers benched in `db` when it exists."""
    from bench import store
    from bench.report import peer_records

    db = Path(db) if db else store.default_db()
    peers = peer_records(db, split=split) if db.exists() else []
    return markdown_table(results_frame(split, peers))
