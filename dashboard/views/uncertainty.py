"""Uncertainty: coverage / reliability, risk–coverage, and the uncertainty sources side by side."""
import streamlit as st

from dashboard import charts, common, glossary
from dashboard.data import queries as Q, stats

c, models = common.analysis_page("Uncertainty", "uncertainty analysis")
st.caption(common.eval_caption(c) + " Sources: the formulation's own σ (aleatoric), MC-Dropout spread, TTA spread, "
           "ensemble member spread, and aleatoric ⊕ epistemic. Intervals assume a Gaussian μ ± zσ.")
common.glossary("σ", "aleatoric", "epistemic", "MC-Dropout", "TTA", "ensemble spread", "total (aleatoric ⊕ epistemic)",
                "coverage", "calibration error", "reliability", "risk–coverage", "AURC", "oracle", "RMSE", "ECE",
                "DLDL", "gaussian_nll", "laplace_nll")

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
sources = st.multiselect("Sources", have, default=have, key="unc_sources",
                         help=glossary.help("aleatoric", "MC-Dropout", "TTA", "ensemble spread",
                                            "total (aleatoric ⊕ epistemic)"))
sel = summary[summary["source"].isin(sources)]

st.subheader("Side by side")
t = sel[["model_id", "source", "n", "mean_sigma", "rmse", "cov_68", "cov_90", "cov_95", "calib_error"]].copy()
if area is not None:
    t = t.merge(area, on=["model_id", "source"], how="left")
t.insert(0, "model", [c.label(m) for m in t["model_id"]])
# Fixed column widths: ten columns fit a 1,400 px screen beside the sidebar with no sideways scroll (issue 21).
num = st.column_config.NumberColumn
st.dataframe(t.drop(columns="model_id"), hide_index=True, width="stretch", column_config={
    "model": st.column_config.TextColumn(width=170),
    "source": st.column_config.TextColumn(width=150, help=glossary.help("aleatoric", "epistemic")),
    "n": num(width=55, help=glossary.help("n")),
    "mean_sigma": num("mean σ", width=65, format="%.2f", help=glossary.help("σ")),
    "rmse": num("RMSE", width=60, format="%.2f", help=glossary.help("RMSE")),
    **{f"cov_{p}": num(f"cover {p}%", width=70, format="%.3f", help=glossary.help("coverage")) for p in (68, 90, 95)},
    "calib_error": num("calib. error", width=90, format="%.3f", help=glossary.help("calibration error")),
    "aurc": num("AURC (MAE)", width=80, format="%.3f", help=glossary.help("AURC")),
})

st.subheader("Coverage (reliability)")
cov = stats.coverage_long(sel)
common.chart(charts.reliability(cov, c.names),
             "One panel per uncertainty source: the share of true ages inside each model's μ ± zσ interval "
             "(observed) against the share it should hold (nominal). On the dashed diagonal the σ are honest; below "
             "it the model is over-confident, above it under-confident.", key="unc_rel")

if curves is not None and len(curves):
    st.subheader("Risk–coverage")
    rc = curves[curves["source"].isin(sources + ["oracle (true error)"])]
    focus = c.focus if c.focus in models else models[0]
    common.chart(charts.risk_coverage(rc, c.names, oracle_for=focus),
                 "Each curve keeps the images with the smallest σ first: the MAE of the kept images (up) against the "
                 "share kept (across). A curve rising from low means σ ranks errors well; a flat one means it does "
                 "not. The dotted oracle ranks by the true error (the best any σ could do) for the focus model.",
                 key="unc_rc")
    st.subheader("σ vs observed error")
    common.chart(charts.sigma_vs_error(rc, c.names, focus),
                 f"For the focus model ({c.label(focus)}): images grouped by predicted σ, each group's mean σ "
                 "(across) against its observed error (RMSE, up), one line per source. On the diagonal σ means what "
                 "it says; above it the model underestimates its error.", key="unc_sig")

gc = common.run_query(Q.gender_calibration, c.db, c.ver, models, c.dataset, c.split, mode=c.mode)
if gc is not None and len(gc):
    st.subheader("Gender probability calibration")
    ece = (gc.assign(w=gc["n"] * (gc["prob"] - gc["observed"]).abs()).groupby("model_id")
           .apply(lambda d: d["w"].sum() / d["n"].sum(), include_groups=False))
    common.chart(charts.gender_reliability(gc, c.names),
                 "Images binned by predicted P(female) (across) against the share of women in each bin (up): on the "
                 "diagonal a 70 % prediction is right 70 % of the time. Expected calibration error (ECE, 10 bins; "
                 "0 is perfect): " + ", ".join(f"{c.label(m)} {v:.3f}" for m, v in ece.items()) + ".",
                 key="unc_gender")
