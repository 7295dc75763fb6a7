"""Model card: what one model is (config, data), how it trained (history.csv) and how it does per group."""
import json

import pandas as pd
import streamlit as st

from dashboard import charts, common, glossary
from dashboard.data import queries as Q
from dashboard.data import registry
from zoo.modes import metrics_key
from zoo.runs import RunRecord

st.title("Model card")
c = common.context()
mid = c.focus
if not mid:
    st.info("No models yet: nothing to describe. " + common.TRAIN_HINT)
    st.stop()

# `run`: a plain dict of what the card shows: a registered run's run.json content (RunRecord.to_dict), else the run
# record in the DB `models` row's `info` (a run no longer in the registry); None when neither (an external peer).
record = next((r for r in registry.registry_runs(c.reg_ver) if r.id == mid), None)
db_row = c.models[c.models["model_id"] == mid].iloc[0] if len(c.models) and mid in set(c.db_models) else None
if record is None and db_row is not None:
    record = RunRecord.from_row(db_row)
run: dict | None = record.to_dict() if record is not None else None
st.subheader(c.label(mid))
st.caption(f"`{mid}` · pick another model in the sidebar (Focus model) or on the Leaderboard · "
           + common.mode_caption(c))

kind = (run or {}).get("kind") or (db_row["kind"] if db_row is not None else "?")
cfg = (run or {}).get("config", {}) or {}
m1, m2, m3, m4 = st.columns(4)
m1.metric("kind", kind, help=glossary.help("kind"))
params = (run or {}).get("params") or (db_row["params"] if db_row is not None else None)
m2.metric("parameters", f"{params / 1e6:.2f} M" if pd.notna(params) and params else "—",  # NA: peers
          help=glossary.help("params"))
ips = (run or {}).get("infer_img_s") or (db_row["infer_img_s"] if db_row is not None else None)
m3.metric("images / s", f"{ips:.0f}" if pd.notna(ips) and ips else "—", help=glossary.help("img/s"))
key = metrics_key(c.mode, "test")  # run.json's test metrics of the sidebar's inference mode, if it has them
test = (((run or {}).get("metrics") or {}).get(key) or {}) if key else {}
# The Leaderboard's number for this mode: the bench's when it has rows in it, else run.json's (B5)
lb = common.run_query(Q.model_scores, c.db, c.ver, c.dataset, c.split, mode=c.mode) if (
    c.has_db and mid in set(c.db_models)) else None
row = lb[lb["model_id"] == mid] if lb is not None and len(lb) else []
no_age = "age" not in (cfg.get("tasks") or ["age"]) or (len(row) and pd.isna(row["mae"].iloc[0]))
if no_age:  # a gender-only model: no "MAE nan", no empty age charts (B4)
    m4.metric(f"MAE ({c.mode})", "no age head")
elif len(row):
    m4.metric(f"MAE (bench, eval set, {c.mode})", f"{row['mae'].iloc[0]:.2f}", help=glossary.help("MAE"))
elif test.get("mae") is not None:
    m4.metric(f"test MAE (run.json, {c.mode})", f"{test['mae']:.2f}", help=glossary.help("MAE"))
else:
    m4.metric(f"test MAE ({c.mode})", "—")

# the names this card shows (its kind, formulation, backbone, balancing) with their glossary entries
named = [kind] + [cfg.get(k) for k in ("backbone", "formulation", "gender_loss", "age_balance", "gender_balance")]
common.glossary("kind", *[n for n in named if isinstance(n, str) and n != "none" and glossary.has(n)], "MAE",
                "params", "img/s", "train loss", "val MAE", "learning rate", "best epoch", "95 % CI", "AdaBN",
                "BN recalibration")
if kind == "ensemble":
    st.markdown("**Members:** " + ", ".join(f"`{m}`" for m in (run or {}).get("members", [])))
if kind == "adapted":
    data = (run or {}).get("data") or {}
    why = ("its own training images, without augmentation (BN recalibration)" if data.get("adapted_to") == data.get(
        "dataset") else f"**{data.get('adapted_to')}** (AdaBN)")
    st.markdown(f"**Parent:** `{(run or {}).get('parent')}` with BatchNorm statistics re-estimated on {why}.")

def _flat(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", json.dumps(v) if isinstance(v, (list, dict, type(None))) else str(v)))
    return out


left, right = st.columns([1, 1])
with left:
    st.subheader("Config")
    if cfg:
        rows = pd.DataFrame(_flat(cfg), columns=["key", "value"])
        st.dataframe(rows, hide_index=True, width="stretch", height=min(36 + 35 * len(rows), 520))
    elif db_row is not None:
        keep = [k for k in db_row.index if k not in ("info", "label", "n_rows")]
        st.dataframe(db_row[keep].astype(str).rename("value").to_frame(), width="stretch")
    else:
        st.info("No configuration recorded for this model.")
with right:
    st.subheader("Data")
    data = (run or {}).get("data")
    if data:
        st.dataframe(pd.DataFrame(_flat(data), columns=["key", "value"]), hide_index=True, width="stretch")
        st.caption("`hash` identifies the exact manifest (image ids, labels, splits) the model trained on.")
    elif db_row is not None:
        st.write(f"Training data: **{db_row.get('training_data') or 'unknown'}**")
    else:
        st.info("No data provenance recorded.")
    prov = {k: (run or {}).get(k) for k in ("commit", "created", "device", "epochs_run", "best_epoch", "steps")
            if (run or {}).get(k) is not None}
    if prov:
        st.dataframe(pd.DataFrame(list(prov.items()), columns=["provenance", "value"]).astype(str), hide_index=True,
                     width="stretch")
    mets = (run or {}).get("metrics") or {}
    if mets:
        st.markdown("**Metrics at registration** (run.json, committed split)")
        st.dataframe(pd.DataFrame(mets).T, width="stretch")

NO_RUN = {  # why a kind of model has no history.csv, pointing only at what that kind has
    "ensemble": "An ensemble has no training run of its own: it averages its members (listed above); each "
                "member's card shows its training curves.",
    "adapted": "An adapted model has no training run of its own: it is its parent (named above) with re-estimated "
               "BatchNorm statistics; the parent's card shows the training curves.",
    "peer": "An external peer was trained outside the zoo, so there are no training curves to show.",
}
st.subheader("Training curves")
hist = registry.history(mid)
if hist is not None and len(hist):
    common.chart(charts.training_curves(hist),
                 "Per epoch (history.csv): training loss, validation MAE (the star marks the best epoch, whose "
                 "weights were kept), validation gender accuracy and the learning rate. A val MAE that turns up "
                 "while the train loss keeps falling is overfitting.", key="card_curves")
    with st.expander("history.csv"):
        st.dataframe(hist, hide_index=True, width="stretch")
elif kind in NO_RUN:
    st.info(NO_RUN[kind])
else:
    st.info("No `history.csv` in this run's folder (not trained here, or not shipped).")

st.subheader("Per-group metrics")
if not c.has_db or mid not in set(c.db_models):
    st.info("Per-group metrics need this model's predictions in the bench DB. " + common.BENCH_HINT.format(db=c.db))
else:
    st.caption(common.eval_caption(c))
    parts = []
    for by in ("age group", "gender", "race"):
        g = common.run_query(Q.group_scores, c.db, c.ver, (mid,), c.dataset, c.split, by, mode=c.mode)
        if g is not None and len(g):
            parts.append(g.assign(by=by))
    if parts:
        g = pd.concat(parts, ignore_index=True)
        a, b, d = st.columns(3)
        for by, where in (("age group", a), ("gender", b), ("race", d)):
            sub = g[g["by"] == by]
            if len(sub) and not no_age:
                common.chart(charts.group_bars(sub, "mae", c.names, f"MAE by {by} (95 % CI)"),
                             f"This model's MAE per {by if by.endswith('group') else by + ' group'} with 95 % CI whiskers; equal heights = equally "
                             "accurate for every group.", where=where, key=f"card_{by}")
        cols = ["by", "grp", "n", "mae", "mae_lo", "mae_hi", "bias", "gender_acc", "gender_acc_lo", "gender_acc_hi"]
        if no_age:  # the gender columns only, counted on gender predictions, not an age n of 0
            st.caption("No age head: per-group gender accuracy only.")
            cols = ["by", "grp", "n_gender", "gender_acc", "gender_acc_lo", "gender_acc_hi"]
        st.dataframe(g[cols], hide_index=True, width="stretch")
