"""Uncertainty: coverage / reliability, risk–coverage, and the uncertainty sources side by side."""
import streamlit as st

from dashboard import charts, common
from dashboard.data import queries as Q, stats

st.title("Uncertainty")
c = common.context()
if not common.need_db(c, "uncertainty analysis"):
    st.stop()
models = common.selected(c)
if not models:
    st.stop()
st.caption(common.eval_caption(c) + " Sources: the formulation's own σ (aleatoric), MC-Dropout spread, TTA spread, "
           "ensemble member spread, and aleatoric ⊕ epistemic. Intervals assume a Gaussian μ ± zσ.")

summary = common.run_query(Q.uncertainty_summary, c.db, c.ver, models, c.dataset, c.split, mode=c.mode)
if summary is None or not len(summary):
    st.info("None of the selected models has uncertainty estimates in the database (all σ columns are NULL). "
            "Benchmark with MC-Dropout / TTA enabled, or pick models with a distribution head (dldl, *_nll).")
    st.stop()
curves = common.run_query(Q.risk_coverage_curves, c.db, c.ver, models, c.dataset, c.split, mode=c.mode)
area = stats.aurc(curves) if curves is not None and len(curves) else None

have = sorted(summary["source"].unique(), key=list(Q.SIGMA_SOURCES).index)
missing = [s for s in Q.SIGMA_SOURCES if s not in have]
if missing:
    st.caption("Not available for the selected models: " + ", ".join(missing)
               + (" (ensemble spread needs an ensemble in the selection)" if "ensemble spread" in missing else ""))
sources = st.multiselect("Sources", have, default=have, key="unc_sources")
sel = summary[summary["source"].isin(sources)]

st.subheader("Side by side")
t = sel[["model_id", "source", "n", "mean_sigma", "rmse", "cov_68", "cov_90", "cov_95", "calib_error"]].copy()
if area is not None:
    t = t.merge(area, on=["model_id", "source"], how="left")
t.insert(0, "model", [c.label(m) for m in t["model_id"]])
st.dataframe(t.drop(columns="model_id"), hide_index=True, width="stretch", column_config={
    "mean_sigma": st.column_config.NumberColumn("mean σ", format="%.2f"),
    "rmse": st.column_config.NumberColumn("RMSE", format="%.2f"),
    "cov_68": st.column_config.NumberColumn("cover 68%", format="%.3f"),
    "cov_90": st.column_config.NumberColumn("cover 90%", format="%.3f"),
    "cov_95": st.column_config.NumberColumn("cover 95%", format="%.3f"),
    "calib_error": st.column_config.NumberColumn("mean |cover − nominal|", format="%.3f"),
    "aurc": st.column_config.NumberColumn("AURC (MAE)", format="%.3f",
                                          help="area under the risk–coverage curve; lower is better"),
})

st.subheader("Coverage (reliability)")
cov = stats.coverage_long(sel)
st.plotly_chart(charts.reliability(cov, c.names), width="stretch", key="unc_rel")

if curves is not None and len(curves):
    st.subheader("Risk–coverage")
    rc = curves[curves["source"].isin(sources + ["oracle (true error)"])]
    focus = c.focus if c.focus in models else models[0]
    st.plotly_chart(charts.risk_coverage(rc, c.names, oracle_for=focus), width="stretch", key="unc_rc")
    st.caption("Each curve keeps the images with the smallest σ first. A flat curve means σ does not rank errors; "
               "the dotted oracle ranks by the true error (the best any σ could do) for the focus model.")
    st.subheader("σ vs observed error")
    st.plotly_chart(charts.sigma_vs_error(rc, c.names, focus), width="stretch", key="unc_sig")

gc = common.run_query(Q.gender_calibration, c.db, c.ver, models, c.dataset, c.split, mode=c.mode)
if gc is not None and len(gc):
    st.subheader("Gender probability calibration")
    ece = (gc.assign(w=gc["n"] * (gc["prob"] - gc["observed"]).abs()).groupby("model_id")
           .apply(lambda d: d["w"].sum() / d["n"].sum(), include_groups=False))
    st.plotly_chart(charts.gender_reliability(gc, c.names), width="stretch", key="unc_gender")
    st.caption("Expected calibration error (10 bins): "
               + ", ".join(f"{c.label(m)} {v:.3f}" for m, v in ece.items()))
