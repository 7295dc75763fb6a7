"""Errors: where models fail — slices, error by true age, error histograms, predicted-vs-true with selection."""
import streamlit as st

from dashboard import charts, common, glossary
from dashboard.data import queries as Q

c, models = common.analysis_page("Errors", "error analysis")
st.caption(common.eval_caption(c))
common.glossary("MAE", "bias", "gender accuracy", "95 % CI", "n", "regression to the mean", "perturbation")

perts = common.run_query(Q.perturbations, c.db, c.ver, mode=c.mode)
pert_names = [p for p in (perts["perturbation"] if perts is not None else []) if p != "none"]

st.subheader("By slice")
a, b, d = st.columns([2, 1, 2])
slice_name = a.selectbox("Slice by", list(Q.SLICES), key="err_slice")
metric = b.radio("Metric", ["mae", "bias", "gender_acc"], key="err_metric",
                 format_func={"mae": "MAE", "bias": "signed bias", "gender_acc": "gender acc"}.get,
                 help=glossary.help("MAE", "bias", "gender accuracy"))
pert = "none"
if not Q.SLICES[slice_name][1] and pert_names:
    pert = d.selectbox("Images", ["none"] + pert_names, key="err_pert",
                       format_func=lambda p: "clean" if p == "none" else f"perturbed: {p} (all severities)")
sl = common.run_query(Q.slice_metrics, c.db, c.ver, models, c.dataset, c.split, slice_name, pert, mode=c.mode)
if sl is not None and len(sl):
    read = {"mae": "MAE in years (lower is better)", "bias": "signed bias in years (0 is unbiased; above 0 guesses "
            "too old)", "gender_acc": "gender accuracy (higher is better)"}[metric]
    common.chart(charts.slice_bars(sl, metric, c.names, f"{metric} by {slice_name} (95 % CI)"),
                 f"Each model's {read} for each value of {slice_name}, with 95 % CI whiskers (hover for n). Where "
                 "the whiskers of two bars do not overlap, the difference is beyond noise.", key="err_slice_chart")
    with st.expander("Slice table"):
        t = sl[["model_id", "slice", "n", "mae", "mae_lo", "mae_hi", "bias", "gender_acc", "n_gender"]].copy()
        t.insert(0, "model", [c.label(m) for m in t["model_id"]])
        st.dataframe(t.drop(columns="model_id"), hide_index=True, width="stretch")
else:
    st.info("No predictions for this slice and selection.")

st.subheader("Error by true age")
w1, _ = st.columns([1, 3])
width = w1.select_slider("Age bin (years)", [1, 2, 5, 10], value=2, key="err_age_bin")
ages = common.run_query(Q.mae_by_age, c.db, c.ver, models, c.dataset, c.split, int(width), mode=c.mode)
if ages is not None and len(ages):
    common.chart(charts.mae_by_age(ages, c.names),
                 f"Top: each model's MAE at each true age ({width}-year bins); bottom: its signed bias with a 95 % "
                 "band. Regression to the mean shows as positive bias for the young and negative bias for the old.",
                 key="err_age_chart")

st.subheader("Error distribution")
slice_vals = list(dict.fromkeys(sl["slice"])) if sl is not None and len(sl) else []
h1, _ = st.columns([2, 3])
only = h1.selectbox(f"Restrict to {slice_name}", ["(all images)"] + slice_vals, key="err_hist_slice")
hist = common.run_query(Q.error_hist, c.db, c.ver, models, c.dataset, c.split,
                        None if only == "(all images)" else slice_name, None if only == "(all images)" else only,
                        mode=c.mode)
if hist is not None and len(hist):
    common.chart(charts.error_hist(hist, c.names),
                 "The share of images at each signed error (predicted − true age), one step line per model: a tall, "
                 "narrow peak at 0 is accurate; a peak right of 0 means the model guesses too old.",
                 key="err_hist_chart")

st.subheader("Predicted vs true")
focus = c.focus if c.focus in set(c.db_models) else models[0]
s1, s2 = st.columns([3, 1])
s1.markdown(f"Model: **{c.label(focus)}** (change the focus model in the sidebar)")
n_points = s2.select_slider("Points", [1000, 2000, 4000, 8000], value=4000, key="err_points")
pts = common.run_query(Q.scatter_sample, c.db, c.ver, focus, c.dataset, c.split, n_points, mode=c.mode)
if pts is None or not len(pts):
    st.info("No clean predictions of this model on the evaluation set.")
    st.stop()
event = common.chart(charts.pred_vs_true(pts, c.label(focus)),
                     f"One dot per image (a sample of {len(pts):,}): true age across, predicted age up, coloured by "
                     "|error|. Dots on the dashed diagonal are exact; a cloud flatter than the diagonal is regression "
                     "to the mean. Box- or lasso-select dots to open those images in the Browser.",
                     key="err_scatter", on_select="rerun", selection_mode=("box", "lasso"))
keys = common.selected_images(event, pts)
if keys:
    st.session_state["browser_selection"] = {"model": focus, "keys": keys, "dataset": c.dataset, "split": c.split}
    sel = pts.set_index(["dataset", "image_id"]).loc[keys].reset_index()
    st.success(f"{len(keys)} images selected: MAE {sel['err'].abs().mean():.2f}, bias {sel['err'].mean():+.2f}. "
               "They are now the Browser's selection.")
    st.page_link("views/browser.py", label="Open them in the Browser", icon=":material/photo_library:")
    st.dataframe(sel.sort_values("err", key=abs, ascending=False).head(200), hide_index=True, width="stretch")
elif st.session_state.get("browser_selection"):
    n = len(st.session_state["browser_selection"]["keys"])
    st.caption(f"The Browser holds an earlier selection of {n} images. Box- or lasso-select points to replace it.")
