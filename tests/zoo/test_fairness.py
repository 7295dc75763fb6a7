"""Binary-attribute metrics, fairness gaps with bootstrap CIs, group thresholds, label issues and the CSV export,
checked against tables computed by hand."""
from __future__ import annotations

import time

import numpy as np
import pytest
from fairlearn.metrics import equalized_odds_difference
from sklearn.metrics import roc_auc_score

from zoo.fairness import (CONSTRAINTS, METRICS, _AucSlice, _from_counts, attribute_report, binary_metrics,
                          choose_threshold, group_thresholds, labels_csv, likely_mislabelled)

# Ten labelled images (plus one without a label, which must be ignored), threshold 0.5:
#   women  y 1   1   1   0   0      decided 1 1 0 1 0   tp 2 fn 1 fp 1 tn 1: acc 3/5, TPR 2/3, FPR 1/2
#          p .9  .8  .3  .6  .1
#   men    y 1   1   0   0   0      decided 1 1 0 0 1   tp 2 fn 0 fp 1 tn 2: acc 4/5, TPR 1,   FPR 1/3
#          p .7  .6  .2  .3  .55
# overall tp 4 fn 1 fp 2 tn 3: acc 7/10, TPR 4/5, FPR 2/5, precision 4/6, F1 8/11, balanced (4/5 + 3/5)/2.
# AUC: of the 25 (positive, negative) pairs, the positive scores higher in 21 and ties in 2 (.3/.3, .6/.6):
#   22/25. Women: 5 of 6 pairs (.3 loses to .6) -> 5/6. Men: 6/6.
# Gaps (men - women): accuracy 1/5, TPR 1/3, FPR 1/6; equalized odds max(1/3, 1/6) = 1/3.
Y = np.array([1, 1, 1, 0, 0, 1, 1, 0, 0, 0, np.nan])
P = np.array([.9, .8, .3, .6, .1, .7, .6, .2, .3, .55, .99])
G = np.array(["woman"] * 5 + ["man"] * 5 + ["woman"])


def _values(d: dict) -> dict:
    return {k: v["value"] for k, v in d.items()}


def test_binary_metrics_reproduce_the_hand_computed_table():
    m = binary_metrics(Y, P, 0.5)
    assert {k: m[k] for k in ("n", "positives", "tp", "fp", "tn", "fn")} == \
        {"n": 10, "positives": 5, "tp": 4, "fp": 2, "tn": 3, "fn": 1}
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["tpr"] == m["recall"] == pytest.approx(0.8)
    assert m["fpr"] == pytest.approx(0.4)
    assert m["precision"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(8 / 11)
    assert m["balanced_accuracy"] == pytest.approx(0.7)
    assert m["roc_auc"] == pytest.approx(22 / 25)
    # the threshold is inclusive (p >= t): at 0.55 the man at .55 is still flagged, at 0.56 not
    assert binary_metrics(Y, P, 0.55)["fp"] == 2 and binary_metrics(Y, P, 0.56)["fp"] == 1


def test_report_per_group_values_and_gaps_match_the_hand_table_and_fairlearn():
    r = attribute_report(Y, P, 0.5, {"gender": G}, n_boot=200)
    women, men = (_values(r["by_group"]["gender"][g]) for g in ("woman", "man"))
    assert (women["n"], women["tp"], women["fn"], women["fp"], women["tn"]) == (5, 2, 1, 1, 1)
    assert (men["n"], men["tp"], men["fn"], men["fp"], men["tn"]) == (5, 2, 0, 1, 2)
    assert women["accuracy"] == pytest.approx(0.6) and men["accuracy"] == pytest.approx(0.8)
    assert women["tpr"] == pytest.approx(2 / 3) and men["tpr"] == pytest.approx(1.0)
    assert women["fpr"] == pytest.approx(0.5) and men["fpr"] == pytest.approx(1 / 3)
    assert women["roc_auc"] == pytest.approx(5 / 6) and men["roc_auc"] == pytest.approx(1.0)
    gaps = _values(r["gaps"]["gender"])
    assert gaps["accuracy"] == pytest.approx(0.2)
    assert gaps["tpr"] == pytest.approx(1 / 3)
    assert gaps["fpr"] == pytest.approx(1 / 6)
    assert gaps["equalized_odds"] == pytest.approx(1 / 3)
    lab = ~np.isnan(Y)
    assert gaps["equalized_odds"] == pytest.approx(
        equalized_odds_difference(Y[lab], P[lab] >= 0.5, sensitive_features=G[lab]))
    assert _values(r["overall"]) == pytest.approx(binary_metrics(Y, P, 0.5))
    assert r["threshold"] == 0.5


def test_images_without_a_group_count_overall_but_in_no_group():
    race = np.array(["a", "a", "b", None, "b", "a", np.nan, "b", "b", "a", "a"], dtype=object)
    r = attribute_report(Y, P, 0.5, {"race": race}, n_boot=50)
    assert set(r["by_group"]["race"]) == {"a", "b"}
    assert r["by_group"]["race"]["a"]["n"]["value"] + r["by_group"]["race"]["b"]["n"]["value"] == 8
    assert r["overall"]["n"]["value"] == 10
    with pytest.raises(ValueError, match="race.*3 values for 11 images"):
        attribute_report(Y, P, 0.5, {"race": race[:3]})


def test_undefined_rates_are_nan_not_zero():
    one_class = binary_metrics(np.array([1.0, 1.0, 1.0]), np.array([.9, .2, .7]), 0.5)
    assert np.isnan(one_class["roc_auc"]) and np.isnan(one_class["fpr"]) and np.isnan(one_class["balanced_accuracy"])
    assert one_class["tpr"] == pytest.approx(2 / 3)
    nothing_flagged = binary_metrics(np.array([1.0, 0.0]), np.array([.1, .2]), 0.5)
    assert np.isnan(nothing_flagged["precision"]) and nothing_flagged["f1"] == 0.0
    empty = binary_metrics(np.array([np.nan]), np.array([.5]), 0.5)
    assert empty["n"] == 0 and np.isnan(empty["accuracy"])
    with pytest.raises(ValueError, match="labels must be 0, 1 or NaN"):
        binary_metrics(np.array([0.0, 2.0]), np.array([.1, .2]), 0.5)
    with pytest.raises(ValueError, match="differ in length"):
        binary_metrics(np.array([0.0, 1.0]), np.array([.1]), 0.5)


def test_vectorised_bootstrap_formulas_equal_sklearn_including_repeated_images():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300).astype(float)
    p = np.round(rng.random(300), 1)  # coarse scores, so many ties
    w = rng.integers(0, 4, 300).astype(float)  # a bootstrap draw is a count per image
    rep = np.repeat(np.arange(300), w.astype(int))
    want = binary_metrics(y[rep], p[rep], 0.5)
    hat = p >= 0.5
    cells = [((y == 1) & hat), ((y == 0) & hat), ((y == 0) & ~hat), ((y == 1) & ~hat)]
    tp, fp, tn, fn = (np.array([w @ c]) for c in cells)
    got = {**_from_counts(tp, fp, tn, fn), "roc_auc": _AucSlice(np.arange(300), y, p)(w[None])}
    assert {k: float(v[0]) for k, v in got.items()} == pytest.approx(want)
    assert got["roc_auc"][0] == pytest.approx(roc_auc_score(y[rep], p[rep]))


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    p = 1 / (1 + np.exp(-(2 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    return y, p, np.where(rng.random(n) < 0.6, "woman", "man")


def test_cis_contain_the_estimate_shrink_with_more_data_and_are_reproducible():
    data = {n: _synthetic(n, 0) for n in (200, 5000)}
    small, big = (attribute_report(y, p, 0.5, {"gender": g}) for y, p, g in data.values())
    for r in (small, big):
        for m in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "tpr", "fpr"):
            ci = r["overall"][m]
            assert ci["lo"] <= ci["value"] <= ci["hi"], m
            for grp in r["by_group"]["gender"].values():
                assert grp[m]["lo"] <= grp[m]["value"] <= grp[m]["hi"], m
        for gap in r["gaps"]["gender"].values():
            assert gap["lo"] <= gap["value"] <= gap["hi"]
    width = {k: r["overall"]["accuracy"]["hi"] - r["overall"]["accuracy"]["lo"] for k, r in (("s", small), ("b", big))}
    assert width["b"] < width["s"] / 3  # sqrt(5000 / 200) = 5 times narrower in theory
    acc = big["overall"]["accuracy"]["value"]
    assert width["b"] == pytest.approx(2 * 1.96 * np.sqrt(acc * (1 - acc) / 5000), rel=0.2)  # binomial interval
    gap_width = {k: r["gaps"]["gender"]["tpr"]["hi"] - r["gaps"]["gender"]["tpr"]["lo"] for k, r in
                 (("s", small), ("b", big))}
    assert gap_width["b"] < gap_width["s"]
    y, p, g = data[200]
    assert attribute_report(y, p, 0.5, {"gender": g}) == small
    assert attribute_report(y, p, 0.5, {"gender": g}, seed=1)["overall"] != small["overall"]


def test_a_thousand_resamples_of_five_thousand_images_take_seconds():
    y, p, g = _synthetic(5000, 1)
    start = time.perf_counter()
    attribute_report(y, p, 0.5, {"gender": g}, n_boot=1000)
    assert time.perf_counter() - start < 15  # ~1 s measured on 2 shared cores


def test_choose_threshold_separates_a_separable_set_and_prefers_half():
    y = np.array([0, 0, 0, 1, 1, 1, np.nan])
    assert choose_threshold(y, np.array([.1, .2, .3, .6, .7, .8, .9])) == 0.5  # any t in (.3, .6] works
    t = choose_threshold(y, np.array([.1, .2, .6, .7, .8, .9, .0]))  # the NaN-labelled .0 is ignored
    assert t == pytest.approx(0.65)
    assert binary_metrics(y, np.array([.1, .2, .6, .7, .8, .9, .0]), t)["accuracy"] == 1.0
    assert choose_threshold(np.array([0, 0, 1, 1.0]), np.array([.05, .1, .2, .3])) == pytest.approx(0.15)
    # equal accuracy (3/4) at 0.15 and at 0.425: the one nearer 0.5 wins
    assert choose_threshold(np.array([0, 1, 0, 1.0]), np.array([.1, .2, .4, .45])) == pytest.approx(0.425)
    with pytest.raises(ValueError, match="no labelled images"):
        choose_threshold(np.array([np.nan]), np.array([.5]))


def _planted_gap(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Men's scores sit lower, so at 0.5 their positives are found less often: a planted TPR gap."""
    rng = np.random.default_rng(seed)
    g = np.where(rng.random(n) < 0.5, "woman", "man")
    y = (rng.random(n) < 0.4).astype(float)
    z = 2.5 * (2 * y - 1) + rng.normal(0, 1.5, n) - np.where(g == "man", 1.5, 0.0)
    return y, 1 / (1 + np.exp(-z)), g


def _rate_gap(hat: np.ndarray, g: np.ndarray, mask: np.ndarray) -> float:
    return abs(hat[mask & (g == "woman")].mean() - hat[mask & (g == "man")].mean())


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_group_thresholds_fit_on_val_narrow_the_planted_gap_on_test(constraint):
    y_val, p_val, g_val = _planted_gap(4000, 0)
    y, p, g = _planted_gap(4000, 1)
    base = (p >= 0.5).astype(int)
    assert _rate_gap(base, g, y == 1) > 0.15  # the planted TPR gap
    fitted = group_thresholds(y_val, p_val, g_val, constraint)
    hat = fitted.predict(p, g)
    assert set(np.unique(hat)) <= {0, 1} and hat.shape == y.shape
    assert np.array_equal(hat, fitted.predict(p, g))  # seeded: same scores, same decisions
    measured = {"equalized_odds": [y == 1, y == 0], "true_positive_rate_parity": [y == 1],
                "demographic_parity": [np.ones_like(y, bool)]}[constraint]
    for mask in measured:
        assert _rate_gap(hat, g, mask) < max(0.05, _rate_gap(base, g, mask) / 3)
    assert _rate_gap(hat, g, y == 1) < _rate_gap(base, g, y == 1) / 3
    assert set(fitted.describe()) == {"woman", "man"}


def test_group_thresholds_reject_unknown_constraints_and_unseen_groups():
    y, p, g = _planted_gap(400, 0)
    with pytest.raises(ValueError, match="unknown fairness constraint 'parity'.*equalized_odds"):
        group_thresholds(y, p, g, "parity")
    fitted = group_thresholds(y, p, g)
    with pytest.raises(ValueError, match="group.*nonbinary.*not seen on val"):
        fitted.predict(np.array([.2, .7]), np.array(["woman", "nonbinary"]))
    with pytest.raises(ValueError, match="1 scores are NaN"):
        fitted.predict(np.array([.2, np.nan]), np.array(["woman", "man"]))
    with pytest.raises(ValueError, match="group woman has only one label"):
        group_thresholds(np.where(g == "woman", 1.0, y), p, g)


def test_likely_mislabelled_ranks_the_planted_flips_first():
    rng = np.random.default_rng(0)
    n = 600
    y = (rng.random(n) < 0.4).astype(float)
    p = np.where(y == 1, rng.uniform(0.55, 0.95, n), rng.uniform(0.05, 0.45, n))  # right, not always sure
    flip = rng.choice(np.arange(10, n), 8, replace=False)
    p[flip] = np.where(y[flip] == 1, 0.995, 0.005)  # the model is sure...
    y[flip] = 1 - y[flip]  # ...and the given label says the opposite
    y[:10] = np.nan  # unlabelled images are skipped, and indices still refer to the input
    found = likely_mislabelled(y, p)
    assert set(found[:8]) == set(flip)
    assert np.array_equal(likely_mislabelled(y, p, top=3), found[:3])
    assert not set(found) & set(range(10))
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        likely_mislabelled(np.array([0.0, 1.0]), np.array([0.2, 1.3]))


def test_labels_csv_writes_the_seed_format_exactly():
    out = labels_csv(["000001.jpg", "a,b.jpg", "c.jpg"], np.array([1, 0, 1]))
    assert out == 'filename,label\n000001.jpg,1\n"a,b.jpg",-1\nc.jpg,1\n'
    assert labels_csv(["x.jpg", "y.jpg"], np.array([False, True])) == "filename,label\nx.jpg,-1\ny.jpg,1\n"
    assert labels_csv([], np.array([])) == "filename,label\n"
    with pytest.raises(ValueError, match="2 filenames but 3 predictions"):
        labels_csv(["a", "b"], np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="1 predictions are NaN"):
        labels_csv(["a", "b"], np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="0/1 decisions"):
        labels_csv(["a", "b"], np.array([0.2, 0.9]))


def test_every_metric_has_a_ci_in_every_section():
    r = attribute_report(Y, P, 0.5, {"gender": G}, n_boot=20)
    assert set(r["overall"]) == set(METRICS)
    assert all(set(grp) == set(METRICS) for grp in r["by_group"]["gender"].values())
    assert set(r["gaps"]["gender"]) == {"accuracy", "tpr", "fpr", "equalized_odds"}
    assert all(set(ci) == {"value", "lo", "hi"} for ci in r["overall"].values())
    assert attribute_report(Y, P, 0.5, None, n_boot=20)["by_group"] == {}
