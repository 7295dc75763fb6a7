"""Robustness: MAE (or gender accuracy) vs perturbation severity per model."""
import streamlit as st

from dashboard import charts, common
from dashboard.data import queries as Q

st.title("Robustness")
c = common.context()
if not common.need_db(c, "robustness"):
    st.stop()
models = common.selected(c)
if not models:
    st.stop()
df = common.run_query(Q.robustness, c.db, c.ver, models, c.dataset, c.split, mode=c.mode)
if df is None or not len(df):
    st.info("No perturbed predictions for the selected models on this evaluation set. Benchmark with perturbations "
            "enabled (each perturbation x severity is one more row per image).")
    st.stop()
missing = [m for m in models if m not in set(df["model_id"])]
if missing:  # said, not silently dropped (issue 21 B7)
    st.warning(f"No perturbed predictions in this mode on this evaluation set for: "
               f"{', '.join(c.label(m) for m in missing)}. Benchmark them with perturbations to compare them here.")
shared = df[df["severity"] == 0].groupby("perturbation")["n"].max()
st.caption(common.eval_caption(c).replace(", clean images unless stated.", ".")
           + " Severity 0 is the clean prediction on the same images as the perturbed ones. Every model is scored "
           "on the images all of them were perturbed on: "
           + ", ".join(f"{p} n = {int(n):,}" for p, n in shared.items()) + ".")
metric = st.radio("Metric", ["mae", "gender_acc"], horizontal=True, key="rob_metric",
                  format_func={"mae": "age MAE", "gender_acc": "gender accuracy"}.get)
st.plotly_chart(charts.robustness(df, c.names, metric), width="stretch", key="rob_chart")

st.subheader("Degradation at the highest severity")
top = df.loc[df.groupby(["model_id", "perturbation"])["severity"].idxmax()]
base = df[df["severity"] == 0][["model_id", "perturbation", "mae", "gender_acc"]]
out = top[["model_id", "perturbation", "severity", "n", "mae", "gender_acc"]].merge(
    base, on=["model_id", "perturbation"], how="left", suffixes=("", "_clean"))
out["MAE increase"] = out["mae"] - out["mae_clean"]
out["relative"] = out["mae"] / out["mae_clean"]
out.insert(0, "model", [c.label(m) for m in out["model_id"]])
st.dataframe(out.drop(columns="model_id"), hide_index=True, width="stretch", column_config={
    "mae": st.column_config.NumberColumn("MAE", format="%.2f"),
    "mae_clean": st.column_config.NumberColumn("MAE clean", format="%.2f"),
    "MAE increase": st.column_config.NumberColumn(format="%+.2f"),
    "relative": st.column_config.NumberColumn("× clean", format="%.2f"),
    "gender_acc": st.column_config.NumberColumn("gender acc", format="%.3f"),
    "gender_acc_clean": st.column_config.NumberColumn("gender acc clean", format="%.3f"),
})
