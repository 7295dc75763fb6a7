"""Slice discovery: where the focus model's error is significantly above its overall error (the search, its
intervals and why no `sliceline`: dashboard/data/slices.py)."""
from urllib.parse import urlencode

import streamlit as st

from dashboard import charts, common
from dashboard.data import queries as Q, slices as S

st.title("Slice discovery")
c = common.context()
if not common.need_db(c, "slice discovery"):
    st.stop()
st.caption("Searches every conjunction of up to three image attributes and labels for the slices where one model's "
           "error is significantly above its overall error, ranked by how much above. " + common.mode_caption(c) + ".")
common.glossary("slice", "support", "effect", "Bonferroni", "MAE", "gender accuracy")


@st.cache_data(show_spinner=False, max_entries=64)
def find(db: str, ver: str, model: str, dataset: str, split: str, mode: str, metric: str, min_support: int,
         max_order: int) -> S.SliceReport:
    return S.search(Q.slice_frame(db, ver, model, dataset, split, mode=mode), metric, min_support, max_order)


# Models ranked by clean MAE (then gender accuracy) on all datasets; the default is the best ensemble.
scores = common.run_query(Q.model_scores, c.db, c.ver, "*", c.split, mode=c.mode)
ranked = list(scores.sort_values(["mae", "gender_acc"], ascending=[True, False], na_position="last")["model_id"]) \
    if scores is not None and len(scores) else []
ranked += [m for m in c.db_models if m not in ranked]
if not ranked:
    st.info("No benchmarked model to search.")
    st.stop()
kind = dict(zip(c.models["model_id"], c.models["kind"])) if len(c.models) else {}
best = next((m for m in ranked if kind.get(m) == "ensemble"), ranked[0])
if st.session_state.get("sl_model") not in ranked:
    st.session_state["sl_model"] = best

sets = common.run_query(Q.eval_sets, c.db, c.ver)
datasets = list(dict.fromkeys(sets["dataset"])) if sets is not None and len(sets) else []
splits = [s for s in ("test", "val", "train") if sets is not None and s in set(sets["split"])] + ["*"]
if st.session_state.get("sl_dataset") not in ["*"] + datasets:
    st.session_state["sl_dataset"] = "*"
if st.session_state.get("sl_split") not in splits:
    st.session_state["sl_split"] = c.split if c.split in splits else splits[0]

a, b, d = st.columns([3, 1, 1])
model = a.selectbox("Focus model", ranked, key="sl_model", format_func=c.label,
                    help="Whose errors are searched. Default: the best ensemble by clean MAE.")
dataset = b.selectbox("Dataset", ["*"] + datasets, key="sl_dataset",
                      format_func=lambda x: "all datasets" if x == "*" else x,
                      help="All datasets: the dataset is one more attribute to slice by. Images without the "
                           "metric's label (CelebA-HQ has no ages) are left out of that metric.")
split = d.selectbox("Split", splits, key="sl_split", format_func=lambda x: "all splits" if x == "*" else x)
a, b, d = st.columns([3, 1, 1])
metric = a.radio("Error", list(S.METRICS), key="sl_metric", horizontal=True,
                 format_func=lambda m: S.METRICS[m][0],
                 help="Absolute age error |predicted − true| per image (its mean is the MAE), or whether the "
                      "predicted gender (P(female) ≥ 0.5) is wrong (its mean is 1 − accuracy).")
min_support = b.number_input("Min images per slice", 5, 5000, 30, step=5, key="sl_min",
                             help="Minimum support: smaller slices are not tested. A slice also needs this many "
                                  "images outside it, and outside it within each of its parents.")
max_order = d.selectbox("Max conditions", [1, 2, 3], index=2, key="sl_order",
                        help="Conjunctions of up to this many attribute = value conditions.")

rep = common.run_query(find, c.db, c.ver, model, dataset, split, c.mode, metric, int(min_support), int(max_order))
if rep is None:
    st.stop()
label, unit = S.METRICS[metric]
if rep.n == 0:
    why = ("a gender-only model, or a dataset without ages such as CelebA-HQ" if metric == "age_abs_error" else
           "a model without a gender head, or a dataset without gender labels")
    what = "age" if metric == "age_abs_error" else "gender"
    st.info(f"**{c.label(model)}** has no clean {what} prediction for an image with a known {what} in this "
            f"evaluation set ({why}). Pick another error, model or dataset.")
    st.stop()
pct = unit == "share"
fmt = (lambda v: f"{100 * v:.1f} %") if pct else (lambda v: f"{v:.2f}")
st.markdown(f"**{c.label(model)}**: overall {label} **{fmt(rep.overall)}** on {rep.n:,} images. Tested "
            f"{rep.n_tested:,} distinct candidate slices over {len(rep.features)} attributes "
            f"({', '.join(rep.features)}); intervals are Bonferroni-adjusted for all of them "
            f"(z = {rep.z:.2f}, 95 % family-wise). Search: {rep.seconds:.2f} s.")
if not len(rep.slices):
    st.info(f"No slice of ≥ {int(min_support)} images is significantly worse than the rest after adjusting for the "
            f"{rep.n_tested:,} slices tested. Lower the minimum support or allow more conditions to search further.")
    st.stop()

top = rep.slices.head(15)
st.plotly_chart(charts.slice_errors(top, rep.overall, unit, f"Top {len(top)} slices by effect: {label}"),
                width="stretch", key="sl_chart")
st.caption("How to read it: each bar is a slice's error with its interval adjusted for every slice tested; the "
           "dashed line is the model's overall error. Every slice shown is worse than the rest of the images beyond "
           "chance, and each multi-condition slice is worse than each of its parts too; the largest excess is on top.")


def link(conditions) -> dict:
    """The Browser's query parameters for a slice (read there by its slice-link block)."""
    return {"model": model, "dataset": dataset, "split": split, "mode": c.mode, "metric": metric,
            "slice": S.spec(conditions)}


t = rep.slices
scale = 100.0 if pct else 1.0
table = {
    "Browser": ["browser?" + urlencode(link(cond)) for cond in t["conditions"]],
    "slice": t["description"], "n": t["n"],
    "slice error [CI]": [f"{fmt(e)} [{lo * scale:.1f}, {hi * scale:.1f}]" if pct else f"{e:.2f} [{lo:.2f}, {hi:.2f}]"
                         for e, lo, hi in zip(t["error"], t["error_lo"], t["error_hi"])],
    "overall": t["overall"] * scale, "effect": t["effect"] * scale,
    "effect [CI]": [f"[{lo * scale:+.2f}, {hi * scale:+.2f}]" for lo, hi in zip(t["effect_lo"], t["effect_hi"])],
}
u = "pp" if pct else "y"
event = st.dataframe(table, hide_index=True, width="stretch", key="sl_table", on_select="rerun",
                     selection_mode="single-row", column_config={
    "Browser": st.column_config.LinkColumn("Browser", display_text="open ↗", width="small",
                                           help="The slice's images in the Browser (new tab)"),
    "slice": st.column_config.TextColumn("slice", width="large"),
    "n": st.column_config.NumberColumn("n", help="images in the slice with the metric defined"),
    "slice error [CI]": st.column_config.TextColumn(
        "slice error [CI]", help="the slice's " + label + " and its Bonferroni-adjusted interval"),
    "overall": st.column_config.NumberColumn(f"overall ({'%' if pct else 'y'})", format="%.2f"),
    "effect": st.column_config.NumberColumn(
        f"effect ({u})", format="%+.2f",
        help="slice error − overall error (percentage points for gender); the ranking"),
    "effect [CI]": st.column_config.TextColumn("effect CI", help="adjusted interval of the effect; above 0"),
})
rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
pick = rows[0] if rows else 0
st.page_link("views/browser.py", label=f"Open “{t['description'].iloc[pick]}” in the Browser",
             icon=":material/photo_library:", query_params=link(t["conditions"].iloc[pick]))
st.caption("Select a row to change the slice this link opens; the table's ↗ links open a new tab. Quartiles (Q1–Q4) "
           f"are per dataset; age group 0-{S.INFANT_MAX} splits the first age group to name the infants.")
