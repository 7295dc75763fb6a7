"""Reads of the model registry (artifacts/runs/<id>/run.json) through `zoo.runs.RunRecord`; no database."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.modes import PLAIN, metrics_key
from zoo.runs import RunRecord, registry_version  # noqa: F401 (registry_version: the pages' cache key)

try:
    import streamlit as st
except ImportError:  # pragma: no cover - the benchmark can run without streamlit installed
    st = None


def runs_root() -> Path:
    from zoo.paths import runs_dir

    return runs_dir()


def _registry_runs_impl(ver: str) -> list[RunRecord]:
    return read_runs(runs_root())


def read_runs(root: Path) -> list[RunRecord]:
    """Every <root>/<id>/run.json (zoo.runs.RunRecord.load_all: light, no torch, for pages that only read)."""
    return RunRecord.load_all(root)


registry_runs = st.cache_data(show_spinner=False)(_registry_runs_impl) if st is not None else _registry_runs_impl


def relations(ver: str) -> pd.DataFrame:
    return model_relations(registry_runs(ver))


def _registry_table_impl(ver: str, mode: str = PLAIN) -> pd.DataFrame:
    """Registered runs as leaderboard-like rows (test metrics from run.json in inference mode `mode`: plain, flip or
    flip+crop, `zoo.modes.metrics_key`; NaN in modes run.json has no metrics for; no CIs: no per-image
    predictions)."""
    key = metrics_key(mode, "test")
    runs = registry_runs(ver)
    by_id = {r.id: r for r in runs}
    rows = []
    for r in runs:
        t = (r.metrics.get(key) or {}) if key else {}
        row = r.to_row(by_id)  # the bench's own run -> `models` row (light: no torch)
        del row["info"]
        rows.append({**row, "mae": t.get("mae"), "rmse": t.get("rmse"), "cs5": t.get("cs5"),
                     "acc10": t.get("acc10"), "gender_acc": t.get("gender_acc"), "f1": t.get("gender_f1"),
                     "gender_auc": t.get("gender_auc"), "n": t.get("n"),
                     "parent": r.parent, "adapted_to": r.adapted_to,
                     "members": ",".join(r.members), "budget": _budget(r.config)})
    return pd.DataFrame(rows)


# Cached on the registry's version like `registry_runs`: every page's context asks for it several times per run.
registry_table = (st.cache_data(show_spinner=False, max_entries=16)(_registry_table_impl) if st is not None
                  else _registry_table_impl)


def leaderboard_board(lb: pd.DataFrame, registry: pd.DataFrame) -> pd.DataFrame:
    """The Leaderboard page's rows for one inference mode: the bench DB's rows (`leaderboard(..., mode)`, origin
    `bench DB`), then every registered run the DB has no rows of in that mode, with its run.json metrics of the same
    mode (`registry_table(ver, mode)`; origin `registry run.json (not benchmarked)`), or, in a mode run.json has no
    metrics for (MC-Dropout passes), listed without numbers (origin NO_NUMBERS): a board never mixes modes."""
    rows = []
    if len(lb):
        d = lb.copy()
        d["origin"] = "bench DB"
        rows.append(d)
    if len(registry):
        reg = registry[~registry["model_id"].isin(lb["model_id"] if len(lb) else [])].copy()
        if len(reg):
            cols = [c for c in ("mae", "gender_acc") if c in reg]
            has = reg[cols].notna().any(axis=1) if cols else pd.Series(False, index=reg.index)
            reg["origin"] = np.where(has, NOT_BENCHED, NO_NUMBERS)
            rows.append(reg)
    if not rows:
        return pd.DataFrame()
    board = pd.concat(rows, ignore_index=True)
    # run.json rows sorted in place by their own number of the same mode, not appended below the bench's (B5)
    key = "mae" if "mae" in board and board["mae"].notna().any() else None
    return board.sort_values(key, na_position="last", kind="stable").reset_index(drop=True) if key else board


NO_NUMBERS = "registry (no numbers in this mode)"
NOT_BENCHED = "registry run.json (not benchmarked)"


def _budget(cfg: dict) -> str | None:
    """The training budget a run had (steps or epochs, batch, lr): runs compared in a study must share it."""
    if not cfg:
        return None
    length = f"{cfg['max_steps']} steps" if cfg.get("max_steps") else f"{cfg.get('epochs')} epochs"
    return f"{length} x {cfg.get('batch_size')} @ lr {cfg.get('lr')}"


def history(model_id: str) -> pd.DataFrame | None:
    """The run's history.csv (one row per epoch), or None."""
    if "/" in model_id or "\\" in model_id or model_id.startswith("."):
        return None
    p = runs_root() / model_id / "history.csv"
    if not p.is_file():
        return None
    try:
        return pd.read_csv(p)
    except Exception:
        return None


def model_relations(runs: list[RunRecord]) -> pd.DataFrame:
    """For each registered run, its AdaBN variants and its twin trained on the primary dataset alone, so the
    Generalization page can put them side by side. Twins share the config but for the extra datasets of the mix, the
    step budget, the warm-up (counted in epochs, whose length the mix sets) and the val score that selects the epoch
    (a mix may select on another dataset's val), and start from the same weights or from twins themselves (a later
    cycle of each). Columns: model_id, relation (AdaBN / single-dataset twin), related."""
    drop = ("name", "datasets", "epochs", "max_steps", "patience", "warmup_epochs", "pretrained", "select")

    def key(r: RunRecord) -> str:
        return json.dumps({k: v for k, v in r.config.items() if k not in drop}, sort_keys=True)

    def mix(r: RunRecord) -> list:
        return r.config.get("datasets") or []

    def primary(r: RunRecord) -> list:
        ds = r.config.get("dataset")
        return [e for e in mix(r) if isinstance(e, dict) and e.get("name") == ds]

    def start(r: RunRecord) -> str | None:  # a run checkpoint as `pretrained`: that run's id
        src = r.config.get("pretrained")
        return Path(src).parent.name if src and str(src).endswith(".safetensors") else src

    rows = []
    singles = [r for r in runs if r.kind == "single"]
    mixed = [r for r in singles if len(mix(r)) > len(primary(r))]
    alone = [t for t in singles if len(mix(t)) == len(primary(t))]
    twins: set[tuple[str | None, str | None]] = set()
    grew = True
    while grew:  # a second cycle's twins are found once the first cycle's are
        grew = False
        for r in mixed:
            for t in alone:
                if (r.id, t.id) not in twins and key(t) == key(r) and primary(t) == primary(r) \
                        and (start(t) == start(r) or (start(r), start(t)) in twins):
                    twins.add((r.id, t.id))
                    grew = True
    for r in runs:
        if r.kind == "adapted" and r.parent:
            rows.append({"model_id": r.parent, "relation": "AdaBN", "related": r.id})
    rows += [{"model_id": r, "relation": "single-dataset twin", "related": t} for r, t in sorted(twins)]
    return pd.DataFrame(rows, columns=["model_id", "relation", "related"])
