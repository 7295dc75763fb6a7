"""Leaderboard: every model (zoo and peers) with accuracy, 95 % CIs and cost; accuracy vs cost."""
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, common
from dashboard.data import queries as Q, registry

st.title("Leaderboard")
c = common.context()

lb = pd.DataFrame()
if c.has_db:
    st.caption(common.eval_caption(c) + " Brackets are 95 % confidence intervals. Click a row to make it the focus "
               "model of the other pages.")
    lb = common.run_query(Q.model_scores, c.db, c.ver, c.dataset, c.split, mode=c.mode)
    lb = pd.DataFrame() if lb is None else lb
else:
    common.need_db(c, "the leaderboard")
    st.caption(common.mode_caption(c) + ".")

# Registered runs without benchmark rows in this mode still belong on the board (their run.json metrics of the same
# mode, no CIs); in a mode run.json has no metrics for (MC-Dropout passes) they are listed without numbers, never
# with another mode's.
board = registry.leaderboard_board(lb, c.registry)
if len(board):
    board["label"] = [c.label(m) for m in board["model_id"]]
no_numbers = int((board["origin"] == registry.NO_NUMBERS).sum()) if len(board) else 0
if no_numbers:
    st.caption(f"{no_numbers} registered model(s) have no numbers in mode **{c.mode}**: not benchmarked in it, and "
               "run.json holds test metrics of plain, flip and flip+crop only. Pick one of those inference modes in "
               "the sidebar to see theirs.")
if not len(board):
    if not len(c.registry):
        st.info("**No models yet.** The registry is empty and there are no benchmark results. " + common.TRAIN_HINT)
    st.stop()


def _fmt(v, lo=None, hi=None, pct=False, digits=2):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.{digits}f}")
    if lo is None or hi is None or np.isnan(lo) or np.isnan(hi):
        return f(v)
    return f"{f(v)} [{f(lo)}, {f(hi)}]"


def col(name):
    return board[name] if name in board else pd.Series([np.nan] * len(board))


show = pd.DataFrame({
    "model": board["label"],
    "kind": board["kind"],
    "source": col("source"),
    "MAE": col("mae").astype(float),
    "MAE 95% CI": [_fmt(v, lo, hi) + (" (run.json, no CI)" if o == registry.NOT_BENCHED and _fmt(v) else "")
                   for v, lo, hi, o in zip(col("mae"), col("mae_lo"), col("mae_hi"), board["origin"])],
    "RMSE": col("rmse").astype(float),
    "CS@5 %": 100 * col("cs5").astype(float),
    "CS@5 CI": [_fmt(v, lo, hi, pct=True) for v, lo, hi in zip(col("cs5"), col("cs5_lo"), col("cs5_hi"))],
    "±10y %": 100 * col("acc10").astype(float),
    "gender acc %": 100 * col("gender_acc").astype(float),
    "gender acc CI": [_fmt(v, lo, hi, pct=True) for v, lo, hi in
                      zip(col("gender_acc"), col("gender_acc_lo"), col("gender_acc_hi"))],
    "gender F1": col("f1").astype(float),
    "gender AUC": col("gender_auc").astype(float),
    "AUC CI": [_fmt(v, lo, hi, digits=3) for v, lo, hi in
               zip(col("gender_auc"), col("gender_auc_lo"), col("gender_auc_hi"))],
    "params (M)": col("params").astype(float) / 1e6,
    "MFLOPs": col("flops").astype(float) / 1e6,
    "img/s": col("infer_img_s").astype(float),
    "n": col("n"),
    "from": board["origin"],
    "id": board["model_id"],
})


def _pick():
    sel = st.session_state.get("leaderboard_table")
    rows_ = getattr(getattr(sel, "selection", None), "rows", None) or (sel or {}).get("selection", {}).get("rows", [])
    if rows_:
        st.session_state["model"] = show["id"].iloc[rows_[0]]


st.dataframe(
    show, hide_index=True, width="stretch", height=min(36 + 35 * len(show), 740), on_select=_pick,
    selection_mode="single-row", key="leaderboard_table",
    column_config={
        "MAE": st.column_config.NumberColumn(format="%.2f", help="mean absolute error, years (lower is better)"),
        "RMSE": st.column_config.NumberColumn(format="%.2f"),
        "CS@5 %": st.column_config.NumberColumn(format="%.1f", help="share with |error| ≤ 5 years"),
        "±10y %": st.column_config.NumberColumn(format="%.1f", help="share with |error| ≤ 10 years"),
        "gender acc %": st.column_config.NumberColumn(format="%.1f"),
        "gender F1": st.column_config.NumberColumn(format="%.3f"),
        "gender AUC": st.column_config.NumberColumn(format="%.3f"),
        "params (M)": st.column_config.NumberColumn(format="%.2f"),
        "MFLOPs": st.column_config.NumberColumn(format="%.0f"),
        "img/s": st.column_config.NumberColumn(format="%.0f", help="inference throughput measured at training"),
    })
if (board["origin"] == registry.NOT_BENCHED).any():
    st.caption(f"Rows marked *registry run.json* are not in the bench DB in mode {c.mode}: their numbers come from "
               "the evaluation at registration in the same mode (full committed test split, no CIs) and are "
               "comparable to the others only when the bench also ran on that full split.")
if c.focus:
    st.caption(f"Focus model: **{c.label(c.focus)}** (`{c.focus}`)")
st.download_button("Download CSV", show.to_csv(index=False).encode(), "leaderboard.csv", "text/csv")

st.subheader("Accuracy vs cost")
cost = {"params": "parameters", "infer_img_s": "images / second (CPU, training machine)", "flops": "FLOPs / image"}
left, right = st.columns([1, 1])
x = left.radio("Cost axis", list(cost), format_func=cost.get, horizontal=True, key="lb_cost")
y = right.radio("Accuracy", ["mae", "gender_acc"], horizontal=True, key="lb_acc",
                format_func={"mae": "MAE (years)", "gender_acc": "gender accuracy"}.get)
plot = board.copy()
if plot[[x, y]].dropna().empty:
    st.info("No model has both a cost and this metric yet.")
else:
    st.plotly_chart(charts.cost_scatter(plot, x, y, labels={**cost, "mae": "MAE (years)",
                                                            "gender_acc": "gender accuracy"}), width="stretch")
    missing = board.loc[board[x].isna(), "label"].tolist()
    if missing:
        st.caption(f"Not plotted (no {cost[x]} recorded): {', '.join(missing[:12])}"
                   + ("…" if len(missing) > 12 else ""))
