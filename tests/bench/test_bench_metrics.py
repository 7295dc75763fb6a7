"""bench.metrics on hand-computed examples."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench import metrics as M


def _frame(pred, true, prob=None, gender=None, **extra) -> pd.DataFrame:
    d = {"age_pred": np.asarray(pred, float), "age": np.asarray(true, float)}
    if prob is not None:
        d["gender_prob"], d["gender"] = np.asarray(prob, float), np.asarray(gender, float)
    return pd.DataFrame({**d, **extra})


def test_age_metrics_exact():
    # errors 2, 0, 6, 12 (and a NaN label that is ignored)
    m = M.age_accuracy(np.array([10, 20, 30, 40, 50.0]), np.array([12, 20, 24, 52, np.nan]))
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(5.0)
    assert m["rmse"] == pytest.approx(math.sqrt((4 + 0 + 36 + 144) / 4))
    assert m["cs5"] == pytest.approx(0.5)
    assert m["acc10"] == pytest.approx(0.75)


def test_gender_metrics_exact():
    prob = np.array([0.9, 0.8, 0.3, 0.6, 0.1, 0.4, 0.7])
    true = np.array([1, 1, 1, 0, 0, 0, np.nan])  # TP 2, FN 1, FP 1, TN 2; the unlabeled row is ignored
    assert M.confusion(prob, true).tolist() == [[2, 1], [1, 2]]
    g = M.gender_accuracy(prob, true)
    assert g["n_gender"] == 6
    assert g["gender_acc"] == pytest.approx(4 / 6)
    assert g["gender_precision"] == pytest.approx(2 / 3)
    assert g["gender_recall"] == pytest.approx(2 / 3)
    assert g["gender_f1"] == pytest.approx(2 / 3)
    # positives {.9, .8, .3} vs negatives {.6, .1, .4}: 3 + 3 + 1 of 9 pairs ordered correctly
    assert g["gender_auc"] == pytest.approx(7 / 9)
    assert M.gender_accuracy(np.full(4, 0.5), np.array([0, 1, 0, 1.0]))["gender_auc"] == pytest.approx(0.5)


def test_point_metrics_of_a_frame_and_missing_gender_head():
    df = _frame([10, 20], [12, 20], [np.nan, np.nan], [0, 1])
    m = M.point_metrics(df)
    assert m["mae"] == pytest.approx(1.0) and m["n_gender"] == 0 and math.isnan(m["gender_acc"])
    ci = M.bootstrap_ci(df, n_boot=50)
    assert "mae" in ci and "gender_acc" not in ci


def test_bootstrap_ci_is_seeded_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)

    def frame(n):
        true = rng.uniform(0, 80, n)
        gender = rng.integers(0, 2, n).astype(float)
        return _frame(true + rng.normal(0, 5, n), true, np.clip(gender * 0.5 + rng.uniform(0, 0.6, n), 0, 1), gender)

    small, large = frame(60), frame(3000)
    a, b = M.bootstrap_ci(small, n_boot=400, seed=1), M.bootstrap_ci(small, n_boot=400, seed=1)
    assert a == b
    point = M.point_metrics(small)
    for k in ("mae", "rmse", "cs5", "acc10", "gender_acc", "gender_f1", "gender_auc"):
        assert a[k][0] <= point[k] <= a[k][1], k
    big = M.bootstrap_ci(large, n_boot=400, seed=1)
    for k in ("mae", "gender_acc", "gender_auc"):
        assert (big[k][1] - big[k][0]) < (a[k][1] - a[k][0]) / 3, k  # ~ 1/sqrt(n): 60 → 3000 is ~7x narrower


def test_perfectly_calibrated_gaussian_covers_at_nominal_rates():
    rng = np.random.default_rng(0)
    n = 40_000
    pred, sigma = rng.uniform(10, 70, n), rng.uniform(2, 10, n)
    true = pred + sigma * rng.standard_normal(n)
    cov = M.interval_coverage(pred, sigma, true)
    for level, got in cov.items():
        assert got == pytest.approx(level, abs=0.01)
    assert M.calibration_error(pred, sigma, true) < 0.01
    over = M.interval_coverage(pred, sigma / 2, true)  # over-confident: intervals too narrow
    assert over[0.9] < 0.65
    assert M.calibration_error(pred, sigma / 2, true) > 0.1
    # NLL is lowest for the true sigma
    assert M.gaussian_nll(pred, sigma, true) < min(M.gaussian_nll(pred, sigma / 2, true),
                                                   M.gaussian_nll(pred, sigma * 2, true))


def test_gaussian_nll_exact():
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    assert M.gaussian_nll(np.array([0.0]), np.array([1.0]), np.array([0.0])) == pytest.approx(half_log_2pi)
    assert M.gaussian_nll(np.array([0.0]), np.array([2.0]), np.array([2.0])) == pytest.approx(
        half_log_2pi + math.log(2) + 0.5)


def test_risk_coverage_and_sparsification_exact():
    err = np.array([1.0, 2, 3, 4])
    worst = np.array([0.4, 0.3, 0.2, 0.1])  # most confident about the largest error
    cov, risk = M.risk_coverage(err, worst)
    assert cov.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == [4, 3.5, 3, 2.5]
    s = M.sparsification(err, worst)
    assert s["aurc"] == pytest.approx(3.25)
    assert s["oracle_aurc"] == pytest.approx((1 + 1.5 + 2 + 2.5) / 4)
    assert s["random_aurc"] == pytest.approx(2.5)
    assert s["ause"] == pytest.approx(1.5)
    assert M.sparsification(err, err)["ause"] == pytest.approx(0.0)


def test_total_sigma_combines_available_parts():
    df = pd.DataFrame({"sigma_aleatoric": [3.0, np.nan], "sigma_epistemic": [4.0, np.nan],
                       "sigma_tta": [np.nan, np.nan]})
    s = M.total_sigma(df)
    assert s[0] == pytest.approx(5.0) and np.isnan(s[1])


def test_fairness_gaps_on_a_constructed_example():
    df = pd.concat([
        # group a: errors 1, 1 → MAE 1; gender all right → TPR 1, FPR 0, accuracy 1
        _frame([11, 21, 31, 41], [10, 20, 30, 42], [0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], race=["a"] * 4),
        # group b: errors 3, 5 → MAE 4; TPR 1/2, FPR 1/4, accuracy 4/6
        _frame([13, 25, 27, 35, 23, 15], [10, 20, 30, 40, 20, 10], [0.9, 0.2, 0.7, 0.1, 0.1, 0.1],
               [1, 1, 0, 0, 0, 0], race=["b"] * 6),
    ], ignore_index=True)
    f = M.fairness_gaps(df, "race")
    assert f["groups"] == 2 and f["worst_group"] == "b" and f["best_group"] == "a"
    assert f["mae_gap"] == pytest.approx(4 - 1)
    assert f["gender_acc_gap"] == pytest.approx(1 - 4 / 6)
    assert f["tpr_gap"] == pytest.approx(0.5) and f["fpr_gap"] == pytest.approx(0.25)
    assert f["equalized_odds_diff"] == pytest.approx(0.5)


def test_age_groups_match_the_manifest_definition():
    from zoo.data.manifest import age_group

    ages = np.array([0, 5, 12, 12.5, 13, 19, 19.9, 20, 39, 40, 59, 60, 99])
    got = M.age_group(ages)
    assert list(got) == [age_group(a) for a in ages]
    assert pd.isna(M.age_group(np.array([np.nan]))[0])


def test_slices_and_group_metrics():
    rng = np.random.default_rng(0)
    n_img = 40
    images = pd.DataFrame({"dataset": "d", "image_id": [f"i{i}" for i in range(n_img)],
                           "brightness": np.linspace(10, 250, n_img), "blur": np.linspace(1, 400, n_img),
                           "age": rng.uniform(0, 80, n_img), "gender": rng.integers(0, 2, n_img).astype(float)})
    preds = pd.concat([images.assign(model_id=m, age_pred=images["age"] + off, gender_prob=0.7,
                                     perturbation="none", severity=0) for m, off in (("m1", 1.0), ("m2", 3.0))])
    s = M.add_slices(preds)
    # quantile edges are per image, so both models get the same bins; Q1 is the darkest quarter
    assert s.groupby("lighting", observed=True).size().tolist() == [20] * 4
    assert s.loc[s["lighting"] == "Q1", "brightness"].max() < s.loc[s["lighting"] == "Q2", "brightness"].min()
    assert set(s["condition"]) == {"none"}
    lb = M.leaderboard(s, n_boot=100)
    assert lb["model_id"].tolist() == ["m1", "m2"]
    assert lb["mae"].tolist() == pytest.approx([1.0, 3.0])
    assert (lb["mae_lo"] <= lb["mae"]).all() and (lb["mae"] <= lb["mae_hi"]).all()
    g = M.group_metrics(s, ["model_id", "age_group"], n_boot=50)
    assert g["n"].sum() == len(s) and {"mae_lo", "mae_hi", "gender_acc"} <= set(g.columns)
