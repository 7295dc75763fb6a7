"""agezoo analysis dashboard: `python -m dashboard` (or `streamlit run dashboard/app.py`).

Reads the model registry (`artifacts/runs`) and the predictions database (`artifacts/bench.duckdb`, see
bench/SCHEMA.md); both move with ZOO_ARTIFACTS. Pages are thin scripts in dashboard/views/ with no SQL; the data layer
is dashboard/data/ (connections, statistics, queries, registry, images, studies), every figure in dashboard/charts.py, the photo pipeline in zoo/photos.py and zoo/faces.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts dashboard/ on the path, not the repo
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import common, predict  # noqa: E402
from dashboard.data import db as DB, registry  # noqa: E402

st.set_page_config(page_title="agezoo — age & gender model zoo", page_icon="🧭", layout="wide")

VIEWS = Path(__file__).resolve().parent / "views"
PAGES = {
    "Results": [
        st.Page(VIEWS / "leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", default=True),
        st.Page(VIEWS / "errors.py", title="Errors", icon=":material/troubleshoot:"),
        st.Page(VIEWS / "fairness.py", title="Fairness", icon=":material/balance:"),
        st.Page(VIEWS / "attributes.py", title="Attributes", icon=":material/face_retouching_natural:"),
        st.Page(VIEWS / "uncertainty.py", title="Uncertainty", icon=":material/ssid_chart:"),
        st.Page(VIEWS / "robustness.py", title="Robustness", icon=":material/shield:"),
        st.Page(VIEWS / "generalization.py", title="Generalization", icon=":material/public:"),
    ],
    "Studies": [
        st.Page(VIEWS / "data_studies.py", title="Data studies", icon=":material/science:"),
        st.Page(VIEWS / "slices.py", title="Slice discovery", icon=":material/manage_search:"),
        st.Page(VIEWS / "embedding.py", title="Embedding map", icon=":material/scatter_plot:"),
        st.Page(VIEWS / "browser.py", title="Browser", icon=":material/photo_library:"),
    ],
    "Models": [
        st.Page(VIEWS / "compare.py", title="Compare a photo", icon=":material/photo_camera:"),
        st.Page(VIEWS / "model_card.py", title="Model card", icon=":material/badge:"),
    ],
}

nav = st.navigation(PAGES)
predict.app_pool(registry.registry_version())  # the zoo for "Compare a photo" loads in the background (once)
DB.reset_stale()
with DB.batch():  # one read-only connection for this run's uncached queries, closed when the run ends
    try:
        common.sidebar()
        nav.run()
    except DB.DBUnavailable as e:  # the file vanished between the status check and a query
        st.info(f"The predictions database is not available: {e}. " + common.BENCH_HINT.format(db=DB.db_path()))
    except DB.DBBusy:
        st.warning("A bench run is writing the predictions database right now; this view has no earlier result "
                   "cached. Reload in a moment.")
if DB.stale():
    st.sidebar.warning("A bench run holds the database: some views show the last results read before it started.")
