"""Slice discovery (dashboard/data/slices.py, the page and its Browser link): a slice planted in a generated DB is
found first, minimum support and Bonferroni intervals hold, pure noise raises no alarm, and on the shipped DB the
best ensemble's known weak slices (infants' gender, 60+ age) are listed."""
from __future__ import annotations

from statistics import NormalDist

import duckdb
import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from dashboard import demo
from dashboard.data import db as DB, queries as Q, slices as S
from zoo.data.manifest import AGE_GROUPS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PLANT_AGE = (("race", "asian"), ("blur", "Q1 blurriest"))  # 12 more years of absolute error
PLANT_GENDER = (("gender", "female"), ("race", "indian"))  # 70 % of them called male


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """A DB written through bench.store's schema (dashboard.demo) whose predictions were then made worse on two
    planted slices, for the ensemble model."""
    folder = tmp_path_factory.mktemp("slices")
    path = folder / "bench.duckdb"
    images = demo.make_images(4000, datasets={"utkface": 1.0}, seed=3)
    demo.write_predictions_db(path, demo.demo_models(3), images, seed=3, perturbations={},
                              splits=("train", "val", "test"))
    model = "ensemble-demo"
    q1 = images["blur"].quantile(0.25)
    age_ids = images.loc[(images["race"] == "asian") & (images["blur"] <= q1), "image_id"]
    g_ids = images.loc[(images["gender"] == 1) & (images["race"] == "indian"), "image_id"]
    flip = g_ids[np.random.default_rng(0).random(len(g_ids)) < 0.7]
    con = duckdb.connect(str(path))
    try:
        con.execute("UPDATE predictions p SET age_pred = p.age_pred + 12 * sign(p.age_pred - i.age + 1e-9) "
                    "FROM images i WHERE i.dataset = p.dataset AND i.image_id = p.image_id AND p.model_id = ? "
                    "AND p.image_id IN (SELECT unnest(?))", [model, list(age_ids)])  # |error| + 12 years
        con.execute("UPDATE predictions SET gender_prob = 0.2 WHERE model_id = ? AND image_id IN (SELECT unnest(?))",
                    [model, list(flip)])
        con.execute("CHECKPOINT")
    finally:
        con.close()
    db = str(path)
    frame = Q.slice_frame.raw(db, DB.db_version(db), model, "*", "*")
    return {"folder": folder, "db": db, "model": model, "frame": frame, "n_age": len(age_ids), "n_gender": len(g_ids)}


def test_planted_age_slice_is_found_first(planted):
    rep = S.search(planted["frame"], "age_abs_error", min_support=30, max_order=3)
    assert rep.n == 4000 and rep.n_tested > 500
    top = rep.slices.iloc[0]
    assert set(top["conditions"]) == set(PLANT_AGE) and top["n"] == planted["n_age"]
    assert top["effect"] > 10 and top["effect_lo"] > 5  # 12 years planted
    # its refinements add nothing of their own: none is listed
    assert not any(set(PLANT_AGE) < set(c) for c in rep.slices["conditions"])


def test_planted_gender_slice_is_found_first(planted):
    rep = S.search(planted["frame"], "gender_error", min_support=30, max_order=3)
    top = rep.slices.iloc[0]
    assert set(top["conditions"]) == set(PLANT_GENDER) and top["n"] == planted["n_gender"]
    assert top["error_lo"] > 0.5 > rep.overall  # ~ 70 % wrong against a few % overall


def test_minimum_support_and_order(planted):
    small = S.search(planted["frame"], "age_abs_error", min_support=30, max_order=1)
    assert (small.slices["order"] == 1).all() and small.n_tested < 60
    big = planted["n_age"] + 20
    rep = S.search(planted["frame"], "age_abs_error", min_support=big, max_order=3)
    assert len(rep.slices) and (rep.slices["n"] >= big).all() and (rep.n - rep.slices["n"] >= big).all()
    assert set(PLANT_AGE) not in [set(c) for c in rep.slices["conditions"]]
    with pytest.raises(ValueError, match="metric"):
        S.search(planted["frame"], "rmse")


def test_intervals_are_bonferroni_over_the_candidates_tested(planted):
    f = planted["frame"]
    rep = S.search(f, "age_abs_error", min_support=30, max_order=2, alpha=0.05)
    assert rep.z == pytest.approx(NormalDist().inv_cdf(1 - 0.05 / (2 * rep.n_tested)))
    assert rep.z > 3.5  # hundreds of candidates: far wider than ± 1.96
    t = rep.slices
    assert len(t) and (t["effect_lo"] > 0).all()
    assert ((t["error_lo"] < t["error"]) & (t["error"] < t["error_hi"])).all()
    np.testing.assert_allclose(t["effect"], t["error"] - rep.overall)
    # by hand for the top slice: mean ± z·sd/√n of its images' absolute errors
    keys = set(S.members(f, t["conditions"].iloc[0], "age_abs_error"))
    inside = f[[k in keys for k in zip(f["dataset"], f["image_id"])]]
    e = S.errors(inside, "age_abs_error")
    assert len(e) == t["n"].iloc[0]
    h = rep.z * e.std(ddof=1) / np.sqrt(len(e))
    assert t["error_lo"].iloc[0] == pytest.approx(e.mean() - h) and t["error_hi"].iloc[0] == pytest.approx(e.mean() + h)
    strict = S.search(f, "age_abs_error", min_support=30, max_order=2, alpha=1e-6)
    assert strict.z > rep.z and len(strict.slices) <= len(t)


def test_pure_noise_raises_no_alarm():
    rng = np.random.default_rng(7)
    n = 5000
    f = pd.DataFrame({
        "dataset": "d", "image_id": [f"i{k}" for k in range(n)], "age": rng.uniform(1, 90, n).round(),
        "gender": rng.integers(0, 2, n), "race": rng.choice(["a", "b", "c", "d"], n),
        "brightness": rng.normal(120, 30, n), "contrast": rng.normal(50, 10, n), "blur": rng.lognormal(5, 1, n),
        "jpeg_quality": 75.0, "face_size": rng.uniform(0.3, 1, n), "background": rng.normal(40, 10, n),
        "face_score": rng.uniform(0, 2, n), "face_found": True, "gender_prob": rng.random(n) * 0.4 + 0.3})
    f["age_pred"] = f["age"] + rng.normal(0, 6, n)
    rep = S.search(f, "age_abs_error", min_support=30, max_order=3)
    assert rep.n_tested > 1000 and len(rep.slices) == 0
    assert "JPEG quality" not in rep.features and "dataset" not in rep.features  # constant: nothing to slice


def test_age_bands_are_the_manifest_groups_with_infants_split():
    assert [b[2] for b in S.AGE_BANDS[2:]] == [g[2] for g in AGE_GROUPS[1:]]
    f = pd.DataFrame({"age": [0, 3, 4, 12, 13, 59, 60, 101, np.nan]})
    assert list(S.FEATURES["age group"](f)) == ["0-3", "0-3", "4-12", "4-12", "13-19", "40-59", "60+", "60+",
                                                 "unknown"]


def test_slice_spec_round_trip_and_members(planted):
    conds = (("race", "a;b=c%d"), ("age group", "0-3"))
    assert S.parse_spec(S.spec(conds)) == conds
    with pytest.raises(ValueError, match="unknown slice feature"):
        S.parse_spec("colour=red")
    keys = S.members(planted["frame"], PLANT_AGE, "age_abs_error")
    assert len(keys) == planted["n_age"] and all(ds == "utkface" for ds, _ in keys)


def test_page_lists_slices_and_links_to_the_browser(planted, dashboard_env):
    from streamlit.testing.v1 import AppTest

    dashboard_env(planted["folder"])  # a DB without a registry
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/slices.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="sl_split").set_value("*").run()  # every split: the planted slice's ~150 images
    assert at.selectbox(key="sl_model").value == planted["model"]  # the (only, so best) ensemble
    table = next(d.value for d in at.dataframe if "slice" in d.value.columns)
    assert table["slice"].iloc[0] in (S.describe(PLANT_AGE), S.describe(PLANT_AGE[::-1]))
    assert table["Browser"].iloc[0].startswith("browser?") and "slice=" in table["Browser"].iloc[0]
    assert len(at.get("plotly_chart")) == 1 and any("How to read it" in c.value for c in at.caption)
    link = at.get("page_link")[0].proto
    assert link.page == "browser" and "slice=" in link.query_string

    from urllib.parse import parse_qsl

    params = dict(parse_qsl(link.query_string))
    at.query_params.update(params)
    at.switch_page("views/browser.py").run()
    assert not at.exception, [e.value for e in at.exception]
    toggle = at.toggle(key="br_use_sel")
    assert toggle.value and f"Only the {planted['n_age']} images of the slice" in toggle.label


def test_shipped_db_lists_infant_gender_and_60_plus_age_slices():
    db = REPO / "artifacts" / "bench.duckdb"
    if not db.is_file():
        pytest.skip("no shipped artifacts/bench.duckdb in this checkout")
    db, ver = str(db), DB.db_version(db)
    scores = Q.model_scores.raw(db, ver, "*", "test")
    kinds = dict(zip(scores["model_id"], scores["kind"]))
    best = next(m for m in scores.sort_values("mae")["model_id"] if kinds[m] == "ensemble")
    frame = Q.slice_frame.raw(db, ver, best, "*", "test")
    gender = S.search(frame, "gender_error")
    age = S.search(frame, "age_abs_error")
    for rep, want in ((gender, (("age group", "0-3"),)), (age, (("age group", "60+"),))):
        row = rep.slices[rep.slices["conditions"] == want]
        assert len(row) == 1, (want, rep.slices["description"].tolist())
        assert row["error_lo"].iloc[0] > rep.overall and row["effect_lo"].iloc[0] > 0
    assert gender.slices["conditions"].iloc[0] == (("age group", "0-3"),)  # the README's infants lead
