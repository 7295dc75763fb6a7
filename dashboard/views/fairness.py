"""Fairness: per-group MAE and gender accuracy with CIs, gaps across models, equalized odds, balancing strategies."""
import streamlit as st

from dashboard import charts, common
from dashboard.data import queries as Q, stats

st.title("Fairness")
c = common.context()
if not common.need_db(c, "fairness analysis"):
    st.stop()
models = common.selected(c)
if not models:
    st.stop()
st.caption(common.eval_caption(c) + " Groups with unknown labels are shown but left out of gaps.")

a, b = st.columns([1, 1])
by = a.radio("Group by", ["gender", "race", "age group"], horizontal=True, key="fair_by")
min_n = b.number_input("Minimum images per group for gaps", 5, 1000, 30, step=5, key="fair_min_n")
groups = common.run_query(Q.group_scores, c.db, c.ver, models, c.dataset, c.split, by, mode=c.mode)
if groups is None or not len(groups):
    st.info("No predictions with these labels.")
    st.stop()

left, right = st.columns(2)
left.plotly_chart(charts.group_bars(groups, "mae", c.names, f"Age MAE by {by} (95 % CI)"), width="stretch",
                  key="fair_mae")
if groups["gender_acc"].notna().any():
    right.plotly_chart(charts.group_bars(groups, "gender_acc", c.names, f"Gender accuracy by {by} (95 % CI)"),
                       width="stretch", key="fair_acc")
else:
    right.info("None of these models predicts gender.")

st.subheader("Gaps across models")
across = "age groups" if by == "age group" else f"{by} groups"
gaps = stats.group_gaps(groups, min_n=int(min_n))
if gaps["mae_gap"].notna().any() or gaps["eq_odds_diff"].notna().any():
    st.plotly_chart(charts.gaps_bars(gaps, c.names, f"Disparities across {across}"), width="stretch",
                    key="fair_gaps")
t = gaps.copy()
if by == "gender":  # each gender group holds only positives or only negatives: no TPR and FPR to compare
    t = t.drop(columns="eq_odds_diff")
t.insert(0, "model", [c.label(m) for m in t["model_id"]])
st.dataframe(t.drop(columns="model_id"), hide_index=True, width="stretch", column_config={
    "mae_gap": st.column_config.NumberColumn("MAE gap (y)", format="%.2f"),
    "mae_gap_significant": st.column_config.CheckboxColumn("gap beyond CIs?"),
    "gender_acc_gap": st.column_config.NumberColumn("gender acc gap", format="%.3f"),
    "eq_odds_diff": st.column_config.NumberColumn(
        "equalized-odds diff", format="%.3f",
        help="max over groups of the spread in true-positive rate or false-positive rate of 'female'"),
})
if by == "gender":
    st.caption("No equalized-odds column by gender: it compares the gender classifier's true- and false-positive "
               "rates across groups, but the women hold only positives (a TPR, no FPR) and the men only negatives "
               "(an FPR, no TPR), so there is nothing to compare. The gender accuracy gap (women's TPR against "
               "men's 1 − FPR) is the comparison that exists; group by race or age group for equalized odds.")
else:
    st.caption("Equalized-odds difference: max(range of TPR, range of FPR) of the gender classifier (female = "
               f"positive) across {across} with ≥ {int(min_n)} images. 0 = identical error rates for every group.")

with st.expander("Per-group table (TPR / FPR with Wilson CIs)"):
    g = groups[["model_id", "grp", "n", "mae", "mae_lo", "mae_hi", "bias", "n_gender", "gender_acc", "tpr", "tpr_lo",
                "tpr_hi", "fpr", "fpr_lo", "fpr_hi"]].copy()
    g.insert(0, "model", [c.label(m) for m in g["model_id"]])
    st.dataframe(g.drop(columns="model_id"), hide_index=True, width="stretch")

st.subheader("Effect of balancing strategies")
all_ids = tuple(c.db_models)
if not len(c.models):
    st.stop()
strat = c.models[["model_id", "label", "kind", "backbone", "age_balance", "gender_balance"]]
strat = strat[strat["kind"].isin(["single"])]
tried = {col: sorted(strat[col].dropna().unique()) for col in ("age_balance", "gender_balance")}
if all(len(v) <= 1 for v in tried.values()):
    st.info("All benchmarked models use the same balancing strategy "
            f"({', '.join(f'{k}={v[0] if v else None}' for k, v in tried.items())}). Train the imbalance "
            "variants of `zoo/configs/default_zoo.yaml` (age_balance/*, gender_balance/*) and benchmark them "
            "to see their effect here.")
    st.stop()
all_groups = common.run_query(Q.group_scores, c.db, c.ver, tuple(strat["model_id"]), c.dataset, c.split, by,
                              mode=c.mode)
if all_groups is None or not len(all_groups):
    st.stop()
gap_all = stats.group_gaps(all_groups, min_n=int(min_n)).merge(strat, on="model_id")
disparities = ["mae_gap", "gender_acc_gap"] if by == "gender" else ["mae_gap", "eq_odds_diff", "gender_acc_gap"]
# a key per option list, so an equalized-odds pick made by race is never carried over to gender
metric = st.radio("Disparity", disparities, horizontal=True, key=f"fair_metric_{len(disparities)}",
                  format_func={"mae_gap": "MAE gap", "eq_odds_diff": "equalized-odds diff",
                               "gender_acc_gap": "gender acc gap"}.get)
l2, r2 = st.columns(2)
for col, where in (("age_balance", l2), ("gender_balance", r2)):
    d = gap_all.dropna(subset=[metric])
    if d[col].nunique() > 1:
        where.plotly_chart(charts.balance_effect(d, col, metric, f"{metric} by {col}"), width="stretch",
                           key=f"fair_bal_{col}")
    else:
        where.info(f"Only {col} = {tried[col][0] if tried[col] else 'n/a'} is benchmarked; no comparison yet.")
