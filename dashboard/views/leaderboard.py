"""Leaderboard: every model (zoo and peers) with accuracy, 95 % CIs and cost; accuracy vs cost."""
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, common, glossary
from dashboard.data import queries as Q, registry

st.title("Leaderboard")
c = common.context()

lb = pd.DataFrame()
if c.has_db:
    st.caption("**Conditions:** " + common.eval_caption(c) + " Brackets are 95 % confidence intervals. Click a row "
               "to make it the focus model of the other pages.")
    lb = common.run_query(Q.model_scores, c.db, c.ver, c.dataset, c.split, mode=c.mode)
    lb = pd.DataFrame() if lb is None else lb
else:
    common.need_db(c, "the leaderboard")
    st.caption("**Conditions:** " + common.mode_caption(c) + ", each model's own test split (its run.json).")

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


def _fmt(v, lo=None, hi=None, pct=False, digits=2) -> str:
    """"4.59 [4.48, 4.70]": a value with its 95 % CI in one cell; the value alone without a CI; "" for none."""
    if v is None or pd.isna(v):
        return ""
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.{digits}f}")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return f(v)
    return f"{f(v)} [{f(lo)}, {f(hi)}]"


def col(name):
    return board[name] if name in board else pd.Series([np.nan] * len(board))


# The metric columns hold numbers (so a click on a header sorts by MAE, not by text); a Styler shows them with their
# CIs, "4.59 [4.48, 4.70]", and run.json rows as "4.61 · run.json" (no per-image rows, so no CI).
show = pd.DataFrame({
    "model": board["label"],
    "kind": board["kind"],
    "MAE": col("mae").astype(float),
    "CS@5 %": 100 * col("cs5").astype(float),
    "gender acc %": 100 * col("gender_acc").astype(float),
    "AUC": col("gender_auc").astype(float),
    "RMSE": col("rmse").astype(float),
    "±10y %": 100 * col("acc10").astype(float),
    "gender F1": col("f1").astype(float),
    "params (M)": col("params").astype(float) / 1e6,
    "MFLOPs": col("flops").astype(float) / 1e6,
    "img/s": col("infer_img_s").astype(float),
    "n": col("n"),
    "from": board["origin"],
    "source": col("source"),
    "id": board["model_id"],
})
ORIGIN_SHORT = {"bench DB": "bench", registry.NOT_BENCHED: "run.json", registry.NO_NUMBERS: "no numbers"}
ci_text = {
    "MAE": [_fmt(v, lo, hi) + (" · run.json" if o == registry.NOT_BENCHED and _fmt(v) else "")
            for v, lo, hi, o in zip(col("mae"), col("mae_lo"), col("mae_hi"), board["origin"])],
    "gender acc %": [_fmt(v, lo, hi, pct=True) for v, lo, hi in
                     zip(col("gender_acc"), col("gender_acc_lo"), col("gender_acc_hi"))],
    "CS@5 %": [_fmt(v, pct=True) for v in col("cs5")],
}
# Every cell's text comes from the Styler (a column_config format would override it).
DIGITS = {"AUC": 3, "RMSE": 2, "±10y %": 1, "gender F1": 3, "params (M)": 2, "MFLOPs": 0, "img/s": 0, "n": 0}
styled = show.style.format({"from": lambda o: ORIGIN_SHORT.get(o, o),
                            **{k: f"{{:.{d}f}}" for k, d in DIGITS.items()}}, na_rep="")


def _texts(styled, name: str, texts: list[str]):
    """Show `texts` in column `name`: one formatter looking the text up by the cell's number (a per-cell format
    costs ~10 ms a cell), per cell only for rows whose number another row shares with a different text."""
    def k(v):
        return None if pd.isna(v) else float(v)

    by_value, clash = {}, set()
    for v, t in zip(show[name], texts):
        if by_value.setdefault(k(v), t) != t:
            clash.add(k(v))
    styled = styled.format(lambda v: by_value.get(k(v), ""), subset=[name])
    for i, (v, t) in enumerate(zip(show[name], texts)):
        if k(v) in clash:
            styled = styled.format(lambda _v, t=t: t, subset=pd.IndexSlice[[i], [name]])
    return styled


for name, texts in ci_text.items():
    styled = _texts(styled, name, texts)

# The compact view fits a 1,400 px screen beside the sidebar (about 925 px of table; every column has a fixed width,
# checked in tests/dashboard/test_glossary.py); "All columns" adds RMSE, ±10y, F1, AUC and FLOPs.
COMPACT = {"model": 200, "kind": 65, "MAE": 140, "CS@5 %": 60, "gender acc %": 130, "params (M)": 75, "img/s": 55,
           "n": 55, "from": 85}
everything = st.toggle("All columns", key="lb_all",
                       help="Also RMSE, ±10y, gender F1 and AUC, MFLOPs and the model source (wider than a laptop "
                            "screen). The CSV download always has every column.")
order = [c_ for c_ in show.columns if c_ != "id"] if everything else list(COMPACT)


def _pick():
    sel = st.session_state.get("leaderboard_table")
    rows_ = getattr(getattr(sel, "selection", None), "rows", None) or (sel or {}).get("selection", {}).get("rows", [])
    if rows_:
        st.session_state["model"] = show["id"].iloc[rows_[0]]


num, txt = st.column_config.NumberColumn, st.column_config.TextColumn
G = glossary.help
config = {
    "model": txt(width=COMPACT["model"], help="The model's name (registry). Click a row to make it the focus model of "
                                              "the other pages; hover a cut-off name to read it whole."),
    "kind": txt(width=COMPACT["kind"], help=G("kind")),
    "MAE": num("MAE [95 % CI]", width=COMPACT["MAE"], help=G("MAE", "95 % CI")),
    "CS@5 %": num(width=COMPACT["CS@5 %"], help=G("CS@5")),
    "gender acc %": num("gender acc % [CI]", width=COMPACT["gender acc %"], help=G("gender accuracy", "95 % CI")),
    "AUC": num("gender AUC", width=70, help=G("AUC")),
    "RMSE": num(width=60, help=G("RMSE")),
    "±10y %": num(width=60, help=G("±10y")),
    "gender F1": num(width=70, help=G("gender F1")),
    "params (M)": num(width=COMPACT["params (M)"], help=G("params")),
    "MFLOPs": num(width=70, help=G("FLOPs")),
    "img/s": num(width=COMPACT["img/s"], help=G("img/s")),
    "n": num(width=COMPACT["n"], help=G("n")),
    "from": txt(width=COMPACT["from"], help=G("from")),
    "source": txt(width=60, help=G("source")),
}
st.dataframe(styled, hide_index=True, width="stretch", height=min(36 + 35 * len(show), 740), on_select=_pick,
             selection_mode="single-row", key="leaderboard_table", column_order=order, column_config=config)
notes = []
if (board["origin"] == registry.NOT_BENCHED).any():
    notes.append(f"Rows from **run.json** have no bench rows in mode {c.mode}: their numbers come from the evaluation "
                 "at registration in the same mode (the model's full test split, no CI). They are sorted in place "
                 "by their number, and comparable to the others only when the bench also ran on that full split.")
if no_numbers:
    notes.append("Rows marked **no numbers** come last.")
notes.append("Sorted by MAE; click a header to sort by another column (numbers sort as numbers).")
st.caption(" ".join(notes))
if c.focus:
    st.caption(f"Focus model: **{c.label(c.focus)}** (`{c.focus}`)")
csv = show.assign(**{"MAE 95% CI": ci_text["MAE"], "gender acc 95% CI": ci_text["gender acc %"],
                     "CS@5 CI": [_fmt(v, lo, hi, pct=True) for v, lo, hi in
                                 zip(col("cs5"), col("cs5_lo"), col("cs5_hi"))],
                     "AUC CI": [_fmt(v, lo, hi, digits=3) for v, lo, hi in
                                zip(col("gender_auc"), col("gender_auc_lo"), col("gender_auc_hi"))]})
st.download_button("Download CSV", csv.to_csv(index=False).encode(), "leaderboard.csv", "text/csv")

st.subheader("Accuracy vs cost")
# Off by default: the chart is what makes a new tab slow (plotly's script loads and draws in the browser, ~1 s
# of the first page's 3 s budget, issue 21), while the table above is the answer most visits come for.
if st.toggle("Show the accuracy-vs-cost chart", key="lb_cost_show",
             help="Every model's accuracy against its size or speed, with the Pareto front named."):
    cost = {"params": "parameters", "infer_img_s": "images / second (CPU, training machine)", "flops": "FLOPs / image"}
    left, right = st.columns([1, 1])
    x = left.radio("Cost axis", list(cost), format_func=cost.get, horizontal=True, key="lb_cost")
    y = right.radio("Accuracy", ["mae", "gender_acc"], horizontal=True, key="lb_acc",
                    format_func={"mae": "MAE (years)", "gender_acc": "gender accuracy"}.get)
    plot = board.copy()
    if plot[[x, y]].dropna().empty:
        st.info("No model has both a cost and this metric yet.")
    else:
        better = "higher" if y == "gender_acc" else "lower"
        labels = {**cost, "mae": "MAE (years)", "gender_acc": "gender accuracy"}
        common.chart(charts.cost_scatter(plot, x, y, labels=labels),
                     f"Each point is a model: {cost[x]} across, {'MAE' if y == 'mae' else 'gender accuracy'} up "
                     f"({better} is better), whiskers its 95 % CI. The circled, named points are the Pareto front: no "
                     "other model is both more accurate and cheaper than them.", key="lb_cost_chart")
        missing = board.loc[board[x].isna(), "label"].tolist()
        if missing:
            st.caption(f"Not plotted (no {cost[x]} recorded): {', '.join(missing[:12])}"
                       + ("…" if len(missing) > 12 else ""))
common.glossary("MAE", "95 % CI", "CS@5", "±10y", "RMSE", "gender accuracy", "gender F1", "AUC", "params", "FLOPs",
                "img/s", "n", "kind", "from", "inference mode", "Pareto front")
