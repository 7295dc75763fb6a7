"""Issue 20's attribute studies as tables with 95 % CIs, from the bench DB's rows on each dataset's committed test
split (decision thresholds from each run's val split, as its run.json records them):

  backbone  the soft-biometric seed's CNN vs ImageNet EfficientNet-Lite0 frozen / fine-tuned on `blond_or_glasses`
  fairness  the seed's imbalance strategies one at a time, plus group thresholds post-processed on the unweighted
            model's val predictions (fairlearn's ThresholdOptimizer, equalized odds)
  sharing   one multi-task network against its single-task twins, task by task

A study is its sweep file (zoo/configs/attr_*_study.yaml): each of its runs is found in the registry by its config's
identity, so a table shows exactly the study's runs, at the budget the file gives them all. Runs not trained or not
benched yet are listed as missing, never silently dropped."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd

from bench import store
from bench.metrics import metrics_with_ci
from bench.report import load_predictions
from zoo.config import TrainConfig, expand_grid, read_yaml
from zoo.fairness import attribute_report, choose_threshold, group_thresholds
from zoo.paths import REPO
from zoo.runs import RunRecord

CONFIGS = REPO / "zoo" / "configs"
# Each study's files: its equal-budget sweep, then (backbone table, below the study's rows) the shipped model, whose
# longer budget keeps it out of the comparison itself.
STUDIES = {"blond_or_glasses": [CONFIGS / "attr_blond_or_glasses_study.yaml",
                                CONFIGS / "attr_blond_or_glasses_lite0.yaml"],
           "sharing": [CONFIGS / "attr_multitask_study.yaml"]}
BACKBONE_ROWS = ("backbone/", "headline/", "attr/")  # run-name prefixes the backbone table shows
ATTRIBUTE = "blond_or_glasses"
DATASET = "celebahq"
MODE = "flip"  # how the study models are benched (`bench run --tta flip`): the DB rows the tables read
N_BOOT = 1000
DISPLAY_HIDDEN = ("model_id", "accuracy", "f1", "gap")  # kept for tests and sorting, not shown


def study_runs(name: str, runs: list[RunRecord] | None = None) -> dict[str, RunRecord | None]:
    """Study run name (e.g. "backbone/softbio_cnn") -> its newest registered run, None where not trained yet."""
    runs = RunRecord.load_all() if runs is None else runs
    by_identity: dict[str, RunRecord] = {}
    for r in sorted((r for r in runs if r.kind == "single"), key=lambda r: r.created or ""):
        try:
            by_identity[repr(TrainConfig.from_dict(r.config).identity())] = r
        except ValueError:
            continue  # a run of an older config format: not part of any study file here
    configs = []
    for path in STUDIES[name]:
        data = read_yaml(path)
        configs += expand_grid(data) if "runs" in data or "grid" in data else [TrainConfig.from_dict(data, path)]
    return {c.name: by_identity.get(repr(c.identity())) for c in configs}


def _ci(d: dict, scale: float = 100.0, digits: int = 1) -> str:
    """"93.1 [92.4, 93.8]" from a {"value", "lo", "hi"} entry (percent by default)."""
    v, lo, hi = (d.get(k) for k in ("value", "lo", "hi"))
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


ROW_COLUMNS = ["model_id", "dataset", "image_id", "split", "path", "prob", "label", "gender", "race"]


def attribute_rows(con, attribute: str, dataset: str, mode: str | None, models: Sequence[str] | None = None,
                   split: str | None = None) -> pd.DataFrame:
    """One row per (model, clean image) of `attribute` on `dataset` in inference mode `mode` (the bench DB's
    `attributes` ⋈ `images`; `split` None: every split): probability, label (0/1, NaN unknown), path, gender
    ("female" / "male" / None) and race (None unknown), ordered by model and image. The Attributes page reads its
    rows through this too."""
    where, prm = ["a.perturbation = 'none'", "a.attribute = ?", "a.dataset = ?", "a.mode = ?"], [attribute, dataset,
                                                                                                   mode]
    if split:
        where.append("i.split = ?")
        prm.append(split)
    if models is not None:
        where.append(f"a.model_id IN ({', '.join('?' * len(models))})" if models else "FALSE")
        prm += list(models)
    return con.execute(f"""
        SELECT a.model_id, a.dataset, a.image_id, i.split, i.path, a.prob, a.label::DOUBLE AS label,
               CASE i.gender WHEN 1 THEN 'female' WHEN 0 THEN 'male' END AS gender, i.race
        FROM attributes a JOIN images i USING (dataset, image_id)
        WHERE {' AND '.join(where)} ORDER BY a.model_id, a.image_id""", prm).df()[ROW_COLUMNS]


DEFAULT_THRESHOLD = 0.5  # for a model with neither val rows nor a threshold of its own


def decision_threshold(val: pd.DataFrame, run: RunRecord | None, attribute: str) -> tuple[float, str]:
    """(threshold a model is judged at, where it comes from). "val": chosen on its labelled val rows of the inference
    mode being judged (`zoo.fairness.choose_threshold`, training's rule), since a threshold chosen on plain
    predictions misjudges TTA outputs (the 4-run Lite0 ensemble: 0.457 on plain val, 0.497 under flip); without such
    rows, "training": the one its training chose on plain val (run.json); else "default". The README tables and the
    Attributes page both judge models here."""
    lab = val[val["label"].notna() & val["prob"].notna()] if len(val) else val
    if len(lab):
        return choose_threshold(lab["label"].to_numpy(float), lab["prob"].to_numpy(float)), "val"
    t = run.attribute_threshold(attribute) if run is not None else None
    return (DEFAULT_THRESHOLD, "default") if t is None else (t, "training")


def _threshold(rows: pd.DataFrame, run: RunRecord, attribute: str = ATTRIBUTE) -> float:
    return decision_threshold(rows[rows["split"] == "val"], run, attribute)[0]


def _report(rows: pd.DataFrame, threshold: float) -> dict:
    test = rows[rows["split"] == "test"]
    return attribute_report(test["label"].to_numpy(float), test["prob"].to_numpy(float), threshold,
                            groups={"gender": test["gender"].to_numpy(object)}, n_boot=N_BOOT)


def _frame(rows: list[dict], missing: list[str]) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    out.attrs["missing"] = missing  # study runs without a trained model or bench rows
    return out


def backbone_table(con, runs: dict[str, RunRecord | None]) -> pd.DataFrame:
    """Accuracy, balanced accuracy, F1 (at the run's val threshold) and ROC AUC on test, with 95 % CIs."""
    out, missing = [], []
    for name, run in runs.items():
        if not name.startswith(BACKBONE_ROWS):
            continue
        rows = attribute_rows(con, ATTRIBUTE, DATASET, MODE, [run.id]) if run else pd.DataFrame()
        if run is None or not (rows["split"] == "test").any():
            missing.append(name)
            continue
        r = _report(rows, _threshold(rows, run))["overall"]
        out.append({"run": name, "model_id": run.id, "n": int(r["n"]["value"]),
                    "accuracy %": _ci(r["accuracy"]), "balanced acc. %": _ci(r["balanced_accuracy"]),
                    "F1": _ci(r["f1"], 1, 3), "ROC AUC": _ci(r["roc_auc"], 1, 3),
                    "accuracy": r["accuracy"]["value"], "f1": r["f1"]["value"]})
    return _frame(out, missing)


def _fairness_row(label: str, model_id: str, rep: dict, base_acc: float | None) -> dict:
    by = rep["by_group"].get("gender", {})
    acc = rep["overall"]["accuracy"]["value"]
    return {"strategy": label, "model_id": model_id, "accuracy %": _ci(rep["overall"]["accuracy"]),
            "women %": _ci(by.get("female", {}).get("accuracy", {})),
            "men %": _ci(by.get("male", {}).get("accuracy", {})),
            "accuracy gap (pp)": _ci(rep["gaps"]["gender"]["accuracy"]),
            "TPR gap (pp)": _ci(rep["gaps"]["gender"]["tpr"]), "FPR gap (pp)": _ci(rep["gaps"]["gender"]["fpr"]),
            "cost (pp)": "–" if base_acc is None else f"{(base_acc - acc) * 100:+.1f}",
            "accuracy": acc, "gap": rep["gaps"]["gender"]["accuracy"]["value"]}


def fairness_table(con, runs: dict[str, RunRecord | None]) -> pd.DataFrame:
    """Per strategy: accuracy overall, of women and of men, and the gender gaps in accuracy, TPR (equal opportunity)
    and FPR (with TPR: equalized odds), each with a 95 % CI; `cost` is the accuracy given up against "none"."""
    plan = [("none", "backbone/softbio_cnn")] + [(n.split("/", 1)[1], n) for n in runs if n.startswith("fairness/")]
    out, missing, base, base_rows = [], [], None, None
    for label, name in plan:
        run = runs.get(name)
        rows = attribute_rows(con, ATTRIBUTE, DATASET, MODE, [run.id]) if run else pd.DataFrame()
        if run is None or not (rows["split"] == "test").any():
            missing.append(name)
            continue
        rep = _report(rows, _threshold(rows, run))
        if label == "none":
            base, base_rows = rep["overall"]["accuracy"]["value"], rows
        out.append(_fairness_row(label, run.id, rep, base))
    if base_rows is not None and (base_rows["split"] == "val").any():
        # Post-processing: group thresholds fitted on the unweighted model's val predictions, applied on test.
        val, test = (base_rows[(base_rows["split"] == s) & base_rows["label"].notna() & base_rows["gender"].notna()]
                     for s in ("val", "test"))
        fitted = group_thresholds(val["label"].to_numpy(float), val["prob"].to_numpy(float),
                                  val["gender"].to_numpy(object), constraint="equalized_odds")
        decided = fitted.predict(test["prob"].to_numpy(float), test["gender"].to_numpy(object)).astype(float)
        rep = attribute_report(test["label"].to_numpy(float), decided, 0.5,
                               groups={"gender": test["gender"].to_numpy(object)}, n_boot=N_BOOT)
        out.append(_fairness_row("post-processed thresholds (equalized odds)", out[0]["model_id"], rep, base))
    elif base_rows is not None:
        missing.append("post-processed thresholds (no val rows: bench the none model on celebahq:val)")
    return _frame(out, missing)


def _with_ci(m: dict, key: str) -> dict:
    """bench.metrics' `key`, `key_lo`, `key_hi` as a {"value", "lo", "hi"} entry."""
    return {"value": m.get(key), "lo": m.get(f"{key}_lo"), "hi": m.get(f"{key}_hi")}


def sharing_table(db: Path | str | None, runs: dict[str, RunRecord | None]) -> pd.DataFrame:
    """Task by task on each dataset's test split: the multi-task network next to the single-task twin trained on
    that task's dataset alone at the same budget (UTKFace age MAE and gender accuracy; CelebA-HQ gender accuracy and
    each attribute's accuracy and F1), with 95 % CIs. Sharing helps a task where `multi-task` beats `single-task`."""
    multi = runs.get("multitask/all")
    twins = {"utkface": runs.get("single/utkface-age-gender"), "celebahq": runs.get("single/celebahq-attributes")}
    missing = [n for n, r in runs.items() if r is None]
    if multi is None:
        return _frame([], missing)
    out = []
    for dataset, twin in twins.items():
        ids = [multi.id] + ([twin.id] if twin else [])
        preds = load_predictions(db, dataset=dataset, split="test", mode=MODE)
        cells = {}
        for mid in ids:
            m = metrics_with_ci(preds[preds["model_id"] == mid], n_boot=N_BOOT)
            cells[mid] = {}
            if dataset == "utkface" and np.isfinite(m["mae"]):
                cells[mid]["age MAE (years)"] = _ci(_with_ci(m, "mae"), 1, 2)
            if m["n_gender"]:
                cells[mid]["gender accuracy %"] = _ci(_with_ci(m, "gender_acc"))
        for (metric, a), b in [((k, v), cells.get(twin.id, {}).get(k, "–") if twin else "–")
                               for k, v in cells.get(multi.id, {}).items()]:
            out.append({"dataset": dataset, "task": metric, "multi-task": a, "single-task": b})
    attrs = [t.split(":", 1)[1] for t in TrainConfig.from_dict(multi.config).tasks if t.startswith("attr:")]
    twin = twins["celebahq"]
    for attr in attrs:
        cells = {}
        for run in (multi, twin):
            if run is None:
                continue
            with closing(store.connect_read(db)) as con:
                rows = attribute_rows(con, attr, DATASET, MODE, [run.id])
            if (rows["split"] == "test").any():
                cells[run.id] = _report(rows, _threshold(rows, run, attr))["overall"]
        for metric, key, scale, digits in (("accuracy %", "accuracy", 100.0, 1), ("F1", "f1", 1.0, 3)):
            out.append({"dataset": DATASET, "task": f"{attr} {metric}",
                        "multi-task": _ci(cells[multi.id][key], scale, digits) if multi.id in cells else "–",
                        "single-task": _ci(cells[twin.id][key], scale, digits) if twin and twin.id in cells else "–"})
    return _frame(out, missing)


def study_tables(db: Path | str | None = None) -> dict[str, pd.DataFrame]:
    """Every study table ("backbone", "fairness", "sharing") from the bench DB; each frame's `attrs["missing"]`
    lists the study runs it could not show yet."""
    runs = RunRecord.load_all()
    blond, sharing = study_runs("blond_or_glasses", runs), study_runs("sharing", runs)
    # Registered ensembles of attribute models (named like the backbone table's rows) join that table.
    blond.update({r.name: r for r in runs if r.kind == "ensemble" and r.name.startswith(BACKBONE_ROWS)
                  and r.attribute_threshold(ATTRIBUTE) is not None})
    with closing(store.connect_read(db)) as con:
        if "attributes" not in set(con.execute("SELECT table_name FROM information_schema.tables").df()["table_name"]):
            empty = _frame([], list(blond) + list(sharing))
            return {"backbone": empty, "fairness": empty, "sharing": empty}
        tables = {"backbone": backbone_table(con, blond), "fairness": fairness_table(con, blond)}
    return {**tables, "sharing": sharing_table(db, sharing)}


def markdown(tables: dict[str, pd.DataFrame]) -> str:
    """The README block: one markdown table per study (the display columns), and what is still missing."""
    titles = {"backbone": ("blond_or_glasses on CelebA-HQ test: the seed's CNN vs ImageNet Lite0 (backbone/ rows at "
                           "equal budget; headline/ is the shipped model, trained longer; attr/ rows: more Lite0 runs "
                           "and the mean of all four)"),
              "fairness": "Gender fairness of blond_or_glasses (the seed's CNN; strategies at equal budget)",
              "sharing": "Multi-task vs single-task twins (equal budget), each dataset's test split"}
    out = []
    for key, title in titles.items():
        frame = tables.get(key, pd.DataFrame())
        out.append(f"**{title}**\n")
        if len(frame):
            cols = [c for c in frame.columns if c not in DISPLAY_HIDDEN]
            out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for _, r in frame.iterrows()]
        missing = frame.attrs.get("missing") or []
        if missing:
            out.append(f"\nNot trained or not benched yet: {', '.join(missing)}.")
        out.append("")
    return "\n".join(out).strip()
