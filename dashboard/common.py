"""Shared Streamlit pieces: the sidebar (evaluation set, model pickers, settings), the page context, empty states."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from dashboard.data import db as DB
from dashboard.data import queries as Q
from dashboard.data import registry as reg
from zoo.modes import REGISTRY_MODES

# "off" plus zoo.inference.TTA_MODES, spelled out: importing zoo.inference would load torch on every page.
PHOTO_TTA = ("off", "flip", "flip+crop")

DEMO_HINT = ("To look around on made-up numbers first: `python -m dashboard.demo /tmp/agezoo-demo` then "
             "`ZOO_ARTIFACTS=/tmp/agezoo-demo ZOO_CACHE=/tmp/agezoo-demo/cache python -m dashboard`.")
BENCH_HINT = ("Fill it with the benchmark: `python -m bench` writes one row per (model, image, perturbation) to "
              "`{db}` (schema: `bench/SCHEMA.md`). The dashboard reloads by itself when the file changes.")
TRAIN_HINT = ("Train and register a model: `python -m zoo train --config zoo/configs/resnet18_dldl.yaml` "
              "(or the whole default zoo: `python -m zoo grid zoo/configs/default_zoo.yaml`).")
COMPARE_DEFAULT = 6


@dataclass
class Ctx:
    db: str
    ver: str
    status: dict
    reg_ver: str
    registry: pd.DataFrame  # registry_table
    models: pd.DataFrame  # DB models (empty when no DB)
    dataset: str = "*"
    split: str = "test"
    mode: str = "plain"  # the inference mode every query of the page reads (zoo.modes): one, never a mix
    modes: pd.DataFrame = field(default_factory=pd.DataFrame)  # Q.modes: the DB's modes, most rows first
    focus: str | None = None
    compare: tuple = ()
    names: dict = field(default_factory=dict)

    @property
    def has_db(self) -> bool:
        return self.status.get("state") == "ok"

    @property
    def db_models(self) -> list[str]:
        return list(self.models["model_id"]) if len(self.models) else []

    def label(self, mid: str | None) -> str:
        return self.names.get(mid, mid or "")


def _status(db: str, ver: str) -> dict:
    try:
        return Q.db_status(db, ver)
    except DB.DBBusy as e:
        return {"state": "busy", "message": f"The predictions database is being written by a bench run ({e})."}


def context() -> Ctx:
    """Everything a page needs, from cached queries and the sidebar's session state."""
    db = str(DB.db_path())
    ver = DB.db_version(db)
    status = _status(db, ver)
    reg_ver = reg.registry_version()
    models, modes = pd.DataFrame(), pd.DataFrame()
    if status.get("state") == "ok":
        try:
            models, modes = Q.models(db, ver), Q.modes(db, ver)
        except DB.DBBusy:
            status = {"state": "busy", "message": "The predictions database is being written by a bench run."}
    ss = st.session_state
    options = mode_options(modes)
    mode = ss.get("inference_mode") if ss.get("inference_mode") in options else options[0]
    try:
        registry = reg.registry_table(reg_ver, mode)
    except Exception as e:  # a broken registry must not take the app down
        st.sidebar.error(f"Cannot read the model registry: {type(e).__name__}: {e}")
        registry = pd.DataFrame()
    names = {}  # the registry's name wins: the DB's copy may be stale (issue 21 B1)
    if len(models):
        names.update({m: lbl for m, lbl in zip(models["model_id"], models["label"])})
    if len(registry):
        names.update({m: n or m for m, n in zip(registry["model_id"], registry["name"])})
    names = unique_names(dict(sorted(names.items())))  # sorted: the order fixes colours, the same on every page
    return Ctx(db=db, ver=ver, status=status, reg_ver=reg_ver, registry=registry, models=models,
               dataset=ss.get("eval_dataset", "*"), split=ss.get("eval_split", "test"), mode=mode, modes=modes,
               focus=ss.get("model"), compare=tuple(ss.get("models", ())), names=names)


def unique_names(names: dict) -> dict:
    """model_id -> display name, made unique: names shared by several models get their id's tail appended, so
    charts keyed by name never merge models and every label points at one model."""
    count: dict = {}
    for n in names.values():
        count[n] = count.get(n, 0) + 1
    out = {}
    for m, n in names.items():
        if count[n] > 1 and n != m:
            tail = m[-8:] if len(m) > 8 else m
            out[m] = f"{n} ({tail})"
        else:
            out[m] = n
    seen = list(out.values())
    return {m: (n if seen.count(n) == 1 else f"{names[m]} ({m})") for m, n in out.items()}


def default_compare(c: "Ctx", ranked: list[str]) -> list[str]:
    """A varied default comparison (issue 21 B3): the best ensemble, the best single network, the peer and a sweep
    baseline, where present (best = first in `ranked`); the top of `ranked` otherwise."""
    kind = {}
    for t in (c.models, c.registry):
        if len(t) and "kind" in t:
            kind.update(zip(t["model_id"], t["kind"]))
    pick: list[str] = []

    def first(ok):
        m = next((m for m in ranked if m not in pick and ok(m)), None)
        if m:
            pick.append(m)

    first(lambda m: kind.get(m) == "ensemble")
    first(lambda m: kind.get(m) == "single")
    first(lambda m: kind.get(m) == "peer")
    # a sweep's baseline: named "base"/"baseline"/"default"; else the last-ranked sweep run ("group/value" name)
    first(lambda m: kind.get(m) == "single" and any(w in f"{m} {c.label(m)}".lower()
                                                    for w in ("base", "default")))
    if len(pick) < 4:
        sweep = [m for m in ranked if kind.get(m) == "single" and "/" in c.label(m) and m not in pick]
        pick += sweep[-1:]
    return pick or ranked[:COMPARE_DEFAULT]


def mode_options(modes: pd.DataFrame) -> list[str]:
    """The inference modes to pick from: the DB's (most rows first: the default), then those run.json has test
    metrics for (plain, flip, flip+crop) that the DB has no rows of."""
    have = list(modes["mode"]) if len(modes) else []
    return have + [m for m in REGISTRY_MODES if m not in have]


def mode_label(c: Ctx, mode: str) -> str:
    row = c.modes[c.modes["mode"] == mode] if len(c.modes) else c.modes
    if len(row):
        return f"{mode} · {int(row['rows'].iloc[0]):,} predictions"
    return f"{mode} · registry run.json only"


def _eval_options(c: Ctx) -> tuple[list[str], list[str]]:
    try:
        sets = Q.eval_sets(c.db, c.ver)
    except DB.DBBusy:
        sets = pd.DataFrame(columns=["dataset", "split", "images"])
    datasets = list(dict.fromkeys(sets["dataset"])) if len(sets) else []
    splits = [s for s in ("test", "val", "train") if len(sets) and s in set(sets["split"])]
    return datasets, splits


def _ranked_models(c: Ctx) -> list[str]:
    """DB models by clean MAE on the evaluation set, then registry-only runs by their test MAE."""
    ranked: list[str] = []
    if c.has_db:
        try:
            lb = Q.model_scores(c.db, c.ver, c.dataset, c.split, mode=c.mode)
            ranked = list(lb["model_id"]) if len(lb) else []
        except DB.DBBusy:
            ranked = []
        ranked += [m for m in c.db_models if m not in ranked]
    if len(c.registry):
        reg = c.registry.sort_values("mae", na_position="last")
        ranked += [m for m in reg["model_id"] if m not in ranked]
    return ranked


def sidebar() -> Ctx:
    """Render the sidebar (every page) and return the context."""
    ss = st.session_state
    c = context()
    sb = st.sidebar
    state = c.status.get("state")
    if state == "ok":
        s = c.status
        sb.caption(f"**{s['predictions']:,}** predictions · {s['models']} models · {s['images']:,} images"
                   + (f" · last bench run {s['last_run'][:16]}" if s.get("last_run") else ""))
        pending = DB.pending_rows(c.db)
        if pending:
            sb.caption(f"{pending:,} more predictions written by a running bench, merged into the DB shortly.")
        datasets, splits = _eval_options(c)
        ds_opts = datasets + (["*"] if len(datasets) > 1 else [])
        if ds_opts:
            if ss.get("eval_dataset") not in ds_opts:
                ss["eval_dataset"] = ds_opts[0]
            sb.selectbox("Evaluation dataset", ds_opts, key="eval_dataset",
                         format_func=lambda d: "all datasets" if d == "*" else d)
        sp_opts = splits + ["*"]
        if ss.get("eval_split") not in sp_opts:
            ss["eval_split"] = sp_opts[0]
        sb.selectbox("Split", sp_opts, key="eval_split", format_func=lambda s: "all splits" if s == "*" else s,
                     help="Model selection used val; report test.")
    elif state == "busy":
        sb.warning(c.status["message"])
    else:
        sb.info("No benchmark results yet.")
    opts = mode_options(c.modes)
    if ss.get("inference_mode") not in opts:
        ss["inference_mode"] = opts[0]
    sb.selectbox("Inference mode", opts, key="inference_mode", format_func=lambda m: mode_label(c, m),
                 help="How the predictions were made: TTA views and MC-Dropout passes (`bench run --tta ... "
                      "--mc-dropout N`). Every page compares models in this one mode only. The registry's run.json "
                      "holds test metrics of plain, flip and flip+crop: the README's table shows those.")
    c = context()
    ranked = _ranked_models(c)
    if ranked:
        if ss.get("model") not in ranked:
            ss["model"] = ranked[0]
        sb.selectbox("Focus model", ranked, key="model", format_func=lambda m: _short(c.label(m), m),
                     help="Used by the Errors scatter, Browser and Model card. Pick it here or click a "
                          "Leaderboard row.")
        if "models" not in ss or not isinstance(ss["models"], list):
            ss["models"] = default_compare(c, ranked)
        # no refill when empty: a cleared selection stays cleared (issue 21 B3)
        ss["models"] = [m for m in ss["models"] if m in ranked]
        sb.multiselect("Compare models", ranked, key="models", format_func=lambda m: _short(c.label(m), m),
                       help="The models drawn side by side on the analysis pages.")
    with sb.expander("Settings"):
        st.text_input("Dataset image folder (optional)", key="image_root",
                      help="Where the evaluation dataset's images live, if not where its manifest says. Image "
                           "paths from the database are resolved inside this folder only.")
        st.slider("MC-Dropout passes (photo)", 0, 30, 10, key="mc_passes",
                  help="Stochastic forward passes per model on the Compare page; 0 = deterministic.")
        st.selectbox("Test-time augmentation (photo)", PHOTO_TTA, key="photo_tta",
                     help="flip: the photo and its mirror image; flip+crop: also a 90 % centre crop of both. "
                          "The shipped Lite0 gains 0.1 years of test MAE from each.")
        st.caption(f"Database: `{c.db}`  \nRegistry: `{reg.runs_root()}`")
    return context()


def _short(label: str, mid: str, n: int = 48) -> str:
    s = label if label == mid else f"{label} · {mid}"
    return s if len(s) <= n else s[: n - 1] + "…"


def need_db(c: Ctx, what: str = "this page") -> bool:
    """Show guidance and return False when there is no usable predictions DB."""
    if c.has_db:
        return True
    state = c.status.get("state")
    if state == "busy":
        st.warning(c.status["message"] + " Results appear as soon as it releases the file; reload in a moment.")
        if st.button("Retry now"):
            st.rerun()
        return False
    st.info(f"**No benchmark results for {what} yet.** {c.status.get('message', '')}\n\n"
            + BENCH_HINT.format(db=c.db) + "\n\n" + DEMO_HINT)
    if not len(c.registry):
        st.info("The model registry is empty too. " + TRAIN_HINT)
    return False


def selected(c: Ctx, min_models: int = 1) -> tuple:
    """The compare selection restricted to models that have predictions in the DB."""
    ms = tuple(m for m in c.compare if m in set(c.db_models))
    if len(ms) < min_models:
        st.info("Pick at least one benchmarked model under **Compare models** in the sidebar.")
    return ms


def analysis_page(title: str, what: str) -> tuple[Ctx, tuple]:
    """The head of a page that analyses the compared models' predictions: its title, the context and the compare
    selection (`selected`). Stops the page, after saying why, without a predictions DB or a benchmarked model."""
    st.title(title)
    c = context()
    if not need_db(c, what):
        st.stop()
    models = selected(c)
    if not models:
        st.stop()
    return c, models


def mode_caption(c: Ctx) -> str:
    """The inference mode a page shows, as every page states it."""
    from zoo.modes import describe

    return f"Inference mode **{c.mode}** ({describe(c.mode)})"


def eval_caption(c: Ctx) -> str:
    ds = "all datasets" if c.dataset == "*" else c.dataset
    sp = "all splits" if c.split == "*" else f"{c.split} split"
    return f"Evaluated on **{ds}**, **{sp}**, clean images unless stated. {mode_caption(c)}."


def chart(fig, caption: str, where=None, **kw):
    """Draw a plotly figure and, right under it, the one line saying what it shows and how to read it (issue 21: a
    caption under every chart). `where`: a column or container (default: the page); `kw` go to `plotly_chart`
    (key, on_select, ...). Returns what `plotly_chart` returns (the selection event when `on_select` is set)."""
    where = st if where is None else where
    event = where.plotly_chart(fig, **{"width": "stretch", **kw})
    where.caption(caption)
    return event


def glossary(*terms: str, where=None) -> None:
    """The page's "Glossary" expander: the entries (dashboard/glossary.py) of the terms the page shows."""
    from dashboard import glossary as G

    (st if where is None else where).expander("Glossary: the terms on this page").markdown(G.markdown(terms))


def run_query(fn, *args, **kw):
    """Call a query; on a locked DB without a cached result, show a warning and return None."""
    try:
        return fn(*args, **kw)
    except DB.DBBusy:
        st.warning("The database is locked by a running bench write and this view has no earlier result cached. "
                   "Reload in a moment.")
        return None


def selected_images(event, frame: pd.DataFrame | None = None) -> list[tuple[str, str]]:
    """(dataset, image_id) of the points a chart's box / lasso / click selection picked, in order, once each: from
    each point's customdata, else (first trace only) its row of `frame`, the chart's data."""
    try:
        points = event.selection.points if event else []
    except AttributeError:  # a dict-shaped event (older Streamlit, AppTest)
        points = (event or {}).get("selection", {}).get("points", [])
    keys = []
    for p in points or []:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if cd and len(cd) == 2:
            keys.append((str(cd[0]), str(cd[1])))
        elif frame is not None and isinstance(p, dict) and p.get("point_index") is not None \
                and p.get("curve_number", 0) == 0:
            r = frame.iloc[int(p["point_index"])]
            keys.append((r["dataset"], r["image_id"]))
    return list(dict.fromkeys(keys))
