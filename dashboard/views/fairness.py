"""Fairness: per-group MAE and gender accuracy with CIs, gaps across models, equalized odds, balancing strategies."""
import streamlit as st

from dashboard import charts, common, glossary
from dashboard.data import queries as Q, stats

c, models = common.analysis_page("Fairness", "fairness analysis")
st.caption(common.eval_caption(c) + " Groups with unknown labels are shown but left out of gaps.")
common.glossary("MAE", "gender accuracy", "95 % CI", "MAE gap", "gender acc gap", "gap beyond CIs?", "equalized odds",
                "equal opportunity", "TPR", "FPR", "disparity", "age balance", "gender balance", "inv_freq", "sqrt_inv",
                "lds", "balanced_sampler", "undersample", "reweight", "backbone")

a, b = st.columns([1, 1])
by = a.radio("Group by", ["gender", "race", "age group"], horizontal=True, key="fair_by")
min_n = b.number_input("Minimum images per group for gaps", 5, 1000, 30, step=5, key="fair_min_n",
                        help="Smaller groups are drawn but left out of the gaps: their numbers are too noisy. "
                             + glossary.help("n"))
groups = common.run_query(Q.group_scores, c.db, c.ver, models, c.dataset, c.split, by, mode=c.mode)
if groups is None or not len(groups):
    st.info("No predictions with these labels.")
    st.stop()

across = "age groups" if by == "age group" else f"{by} groups"
left, right = st.columns(2)
common.chart(charts.group_bars(groups, "mae", c.names, f"Age MAE by {by} (95 % CI)"),
             f"Each model's age MAE per {across[:-1]}, 95 % CI whiskers (lower is better). A fair model has bars of "
             "equal height; whiskers that do not overlap mark a real difference.", where=left, key="fair_mae")
if groups["gender_acc"].notna().any():
    common.chart(charts.group_bars(groups, "gender_acc", c.names, f"Gender accuracy by {by} (95 % CI)"),
                 f"Each model's gender accuracy per {across[:-1]}, 95 % CI whiskers (higher is better); equal heights "
                 "mean the classifier serves every group alike.", where=right, key="fair_acc")
else:
    right.info("None of these models predicts gender.")

st.subheader("Gaps across models")
gaps = stats.group_gaps(groups, min_n=int(min_n))
if gaps["mae_gap"].notna().any() or gaps["eq_odds_diff"].notna().any():
    common.chart(charts.gaps_bars(gaps, c.names, f"Disparities across {across}"),
                 f"One bar per model: left, the worst minus the best {across[:-1]}'s MAE in years; right (where it "
                 "exists), the equalized-odds difference of the gender classifier. Shorter bars are fairer; 0 means "
                 "every group is served alike.", key="fair_gaps")
t = gaps.copy()
if by == "gender":  # each gender group holds only positives or only negatives: no TPR and FPR to compare
    t = t.drop(columns="eq_odds_diff")
t.insert(0, "model", [c.label(m) for m in t["model_id"]])
st.dataframe(t.drop(columns="model_id"), hide_index=True, width="stretch", column_config={
    "mae_gap": st.column_config.NumberColumn("MAE gap (y)", format="%.2f", help=glossary.help("MAE gap")),
    "mae_gap_significant": st.column_config.CheckboxColumn("gap beyond CIs?", help=glossary.help("gap beyond CIs?")),
    "gender_acc_gap": st.column_config.NumberColumn("gender acc gap", format="%.3f",
                                                    help=glossary.help("gender acc gap")),
    "eq_odds_diff": st.column_config.NumberColumn("equalized-odds diff", format="%.3f",
                                                  help=glossary.help("equalized odds")),
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
                               "gender_acc_gap": "gender acc gap"}.get,
                  help=glossary.help("MAE gap", "equalized odds", "gender acc gap"))
l2, r2 = st.columns(2)
for col, where in (("age_balance", l2), ("gender_balance", r2)):
    d = gap_all.dropna(subset=[metric])
    if d[col].nunique() > 1:
        common.chart(charts.balance_effect(d, col, metric, f"{metric} by {col}"),
                     f"One dot per benchmarked single network, by the {col.replace('_', ' ')} strategy it trained "
                     f"with (colour: backbone). A strategy whose dots sit lower narrows the {by} {metric}; compare "
                     "dots of one colour, as backbones differ too.", where=where, key=f"fair_bal_{col}")
    else:
        where.info(f"Only {col} = {tried[col][0] if tried[col] else 'n/a'} is benchmarked; no comparison yet.")
