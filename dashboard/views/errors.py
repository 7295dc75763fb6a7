"""Errors: where models fail — slices, error by true age, error histograms, predicted-vs-true with selection."""
import streamlit as st

from dashboard import charts, common
from dashboard.data import queries as Q

st.title("Errors")
c = common.context()
if not common.need_db(c, "error analysis"):
    st.stop()
models = common.selected(c)
if not models:
    st.stop()
st.caption(common.eval_caption(c))

perts = common.run_query(Q.perturbations, c.db, c.ver, mode=c.mode)
pert_names = [p for p in (perts["perturbation"] if perts is not None else []) if p != "none"]

st.subheader("By slice")
a, b, d = st.columns([2, 1, 2])
slice_name = a.selectbox("Slice by", list(Q.SLICES), key="err_slice")
metric = b.radio("Metric", ["mae", "bias", "gender_acc"], key="err_metric",
                 format_func={"mae": "MAE", "bias": "signed bias", "gender_acc": "gender acc"}.get)
pert = "none"
if not Q.SLICES[slice_name][1] and pert_names:
    pert = d.selectbox("Images", ["none"] + pert_names, key="err_pert",
                       format_func=lambda p: "clean" if p == "none" else f"perturbed: {p} (all severities)")
sl = common.run_query(Q.slice_metrics, c.db, c.ver, models, c.dataset, c.split, slice_name, pert, mode=c.mode)
if sl is not None and len(sl):
    st.plotly_chart(charts.slice_bars(sl, metric, c.names, f"{metric} by {slice_name} (95 % CI)"),
                    width="stretch", key="err_slice_chart")
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
    st.plotly_chart(charts.mae_by_age(ages, c.names), width="stretch", key="err_age_chart")
    st.caption("Regression to the mean shows as positive bias for the young and negative bias for the old.")

st.subheader("Error distribution")
slice_vals = list(dict.fromkeys(sl["slice"])) if sl is not None and len(sl) else []
h1, _ = st.columns([2, 3])
only = h1.selectbox(f"Restrict to {slice_name}", ["(all images)"] + slice_vals, key="err_hist_slice")
hist = common.run_query(Q.error_hist, c.db, c.ver, models, c.dataset, c.split,
                        None if only == "(all images)" else slice_name, None if only == "(all images)" else only,
                        mode=c.mode)
if hist is not None and len(hist):
    st.plotly_chart(charts.error_hist(hist, c.names), width="stretch", key="err_hist_chart")

st.subheader("Predicted vs true")
focus = c.focus if c.focus in set(c.db_models) else models[0]
s1, s2 = st.columns([3, 1])
s1.markdown(f"Model: **{c.label(focus)}** (change the focus model in the sidebar)")
n_points = s2.select_slider("Points", [1000, 2000, 4000, 8000], value=4000, key="err_points")
pts = common.run_query(Q.scatter_sample, c.db, c.ver, focus, c.dataset, c.split, n_points, mode=c.mode)
if pts is None or not len(pts):
    st.info("No clean predictions of this model on the evaluation set.")
    st.stop()
event = st.plotly_chart(charts.pred_vs_true(pts, c.label(focus)), width="stretch", key="err_scatter",
                        on_select="rerun", selection_mode=("box", "lasso"))
points = []
try:
    points = event.selection.points if event else []
except AttributeError:
    points = (event or {}).get("selection", {}).get("points", [])
keys = []
for p in points or []:
    cd = p.get("customdata") if isinstance(p, dict) else None
    if cd and len(cd) == 2:
        keys.append((str(cd[0]), str(cd[1])))
    elif isinstance(p, dict) and p.get("point_index") is not None and p.get("curve_number", 0) == 0:
        r = pts.iloc[int(p["point_index"])]
        keys.append((r["dataset"], r["image_id"]))
if keys:
    keys = list(dict.fromkeys(keys))
    st.session_state["browser_selection"] = {"model": focus, "keys": keys, "dataset": c.dataset, "split": c.split}
    sel = pts.set_index(["dataset", "image_id"]).loc[keys].reset_index()
    st.success(f"{len(keys)} images selected: MAE {sel['err'].abs().mean():.2f}, bias {sel['err'].mean():+.2f}. "
               "They are now the Browser's selection.")
    st.page_link("views/browser.py", label="Open them in the Browser", icon=":material/photo_library:")
    st.dataframe(sel.sort_values("err", key=abs, ascending=False).head(200), hide_index=True, width="stretch")
elif st.session_state.get("browser_selection"):
    n = len(st.session_state["browser_selection"]["keys"])
    st.caption(f"The Browser holds an earlier selection of {n} images. Box- or lasso-select points to replace it.")
