"""bench/attribute_studies.py: study runs found by config identity, and the fairness / backbone tables on a real
DuckDB file (the bench schema) with planted predictions."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from bench import store
from bench.attribute_studies import (ATTRIBUTE, DATASET, MODE, backbone_table, fairness_table, markdown,
                                     study_runs)
from zoo.config import expand_grid, read_yaml
from zoo.runs import RunRecord


def test_study_runs_are_found_by_config_identity_not_by_name():
    from bench.attribute_studies import STUDIES

    cfg = expand_grid(read_yaml(STUDIES["blond_or_glasses"][0]))[2]  # backbone/lite0-finetuned
    d = dataclasses.asdict(cfg) | {"name": "renamed by hand"}
    found = study_runs("blond_or_glasses", [RunRecord(id="x-1", kind="single", config=d, created="2026-01-01"),
                                            RunRecord(id="x-0", kind="single", config=d, created="2025-01-01")])
    assert found[cfg.name].id == "x-1"  # the newest run of that identity
    assert [n for n, r in found.items() if r is not None] == [cfg.name]


def _full(table: str, cols: dict) -> pd.DataFrame:
    """Rows with every column of the schema: the given ones, NULL elsewhere."""
    n = len(cols["image_id"])
    return pd.DataFrame({c: cols.get(c, [None] * n) for c in store.columns(table)})


def _plant(con, model: str, rng, men_error: float, women_error: float, n: int = 600) -> None:
    """Test and val images (half men) whose decisions at 0.5 are wrong at the given rates."""
    for split in ("val", "test"):
        ids = [f"{split}{i}" for i in range(n)]
        gender = np.arange(n) % 2  # 1 = female
        label = rng.integers(0, 2, n)
        wrong = rng.random(n) < np.where(gender == 1, women_error, men_error)
        decided = np.where(wrong, 1 - label, label)
        prob = np.clip(np.where(decided == 1, 0.75, 0.25) + rng.normal(0, 0.1, n), 0.01, 0.99)
        if not con.execute("SELECT count(*) FROM images WHERE image_id = ?", [ids[0]]).fetchall()[0][0]:
            store.insert(con, "images", _full("images", {"dataset": DATASET, "image_id": ids, "split": split,
                                                         "gender": gender}))
        store.insert(con, "attributes", _full("attributes", {
            "model_id": model, "dataset": DATASET, "image_id": ids, "perturbation": "none", "severity": 0,
            "mode": MODE, "attribute": ATTRIBUTE, "prob": prob, "label": label}))


@pytest.fixture
def con(tmp_path):
    with store.connect_write(tmp_path / "bench.duckdb") as c:
        yield c


def test_fairness_table_orders_strategies_and_post_processing_narrows_a_planted_gap(con):
    rng = np.random.default_rng(0)
    _plant(con, "none-model", rng, men_error=0.30, women_error=0.05)
    _plant(con, "weights-model", rng, men_error=0.12, women_error=0.10)
    runs = {"backbone/softbio_cnn": RunRecord(id="none-model", kind="single"),
            "fairness/gender-weights": RunRecord(id="weights-model", kind="single"),
            "fairness/focal": None}
    t = fairness_table(con, runs)
    assert list(t["strategy"]) == ["none", "gender-weights", "post-processed thresholds (equalized odds)"]
    assert t.attrs["missing"] == ["fairness/focal"]
    none, weights, post = t.to_dict("records")
    assert none["gap"] == pytest.approx(0.25, abs=0.06)  # planted 30 % vs 5 % error
    assert weights["gap"] < none["gap"] and post["gap"] < none["gap"]
    assert none["cost (pp)"] == "+0.0"
    assert float(weights["cost (pp)"]) == pytest.approx((none["accuracy"] - weights["accuracy"]) * 100, abs=0.05)
    assert "[" in none["accuracy gap (pp)"] and "[" in none["TPR gap (pp)"]  # values with their 95 % CIs
    text = markdown({"fairness": t})
    assert "| strategy |" in text and "fairness/focal" in text and "model_id" not in text


def test_backbone_table_chooses_the_threshold_on_val_rows_of_its_mode_else_the_runs(con):
    """With val rows in the table's mode, the threshold is chosen on them (a run's plain-val 0.9 is not used); without
    them, the run's own threshold; without either, 0.5."""
    from bench.attribute_studies import decision_threshold

    rng = np.random.default_rng(1)
    _plant(con, "m", rng, men_error=0.1, women_error=0.1)
    shifted = RunRecord(id="m", kind="single", metrics={"attributes": {ATTRIBUTE: {"threshold": 0.9}}})
    on_val = backbone_table(con, {"backbone/a": shifted, "backbone/b": None})
    assert on_val["accuracy"][0] == pytest.approx(0.9, abs=0.03)  # the planted val rows' threshold, near 0.5
    assert on_val.attrs["missing"] == ["backbone/b"]
    con.execute("DELETE FROM attributes WHERE model_id = 'm' AND image_id LIKE 'val%'")
    at_high = backbone_table(con, {"backbone/a": shifted})
    assert at_high["accuracy"][0] < 0.7  # nearly everything decided absent at the run's 0.9
    no_val = pd.DataFrame(columns=["prob", "label"])
    assert decision_threshold(no_val, shifted, ATTRIBUTE) == (0.9, "training")
    assert decision_threshold(no_val, None, ATTRIBUTE) == (0.5, "default")
    val = pd.DataFrame({"prob": [0.1, 0.2, 0.3, 0.4], "label": [0, 0, 1, 1.0]})
    assert decision_threshold(val, shifted, ATTRIBUTE) == (pytest.approx(0.25), "val")
