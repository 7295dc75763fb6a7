"""Attributes: models' binary attribute heads (e.g. `blond_or_glasses`): a leaderboard per attribute with CIs, a
gender-fairness panel, the accuracy / fairness trade-off of the threshold, confusion counts, error and
likely-mislabelled galleries, and the seed's test-set labels CSV."""
import pandas as pd
import streamlit as st

from dashboard import charts, common
from dashboard.data import attributes as A, images

st.title("Attributes")
c = common.context()
if not common.need_db(c, "attribute models"):
    st.stop()
# Attribute models are benched in their own mode (often plain or flip: a sigmoid head gains little from MC passes),
# so when the sidebar's mode has no attribute rows the page shows the mode that has the most, and says so.
modes = common.run_query(A.attribute_modes, c.db, c.ver) or []
mode = c.mode if c.mode in modes or not modes else modes[0]
sets = common.run_query(A.attribute_sets, c.db, c.ver, mode=mode)
if sets is None:
    st.stop()
sets = sets[sets["labelled"] > 0]
if not len(sets):
    st.info(f"**No attribute predictions with labels in inference mode {mode}.** Train a model with attribute "
            "heads (`tasks: [attr:Eyeglasses]`, or a composite target: `tasks: [attr:blond_or_glasses]` with "
            "`targets: {blond_or_glasses: \"Blond_Hair | Eyeglasses\"}`), then bench it on a dataset that has the "
            "labels: `python -m bench run --models <id> --datasets celebahq:val+test`.")
    st.stop()

left, mid, right = st.columns([2, 2, 1])
names = sorted(sets["attribute"].unique())
if st.session_state.get("attr_name") not in names:  # first the attribute with the most labelled positives
    st.session_state["attr_name"] = sets.groupby("attribute")["positives"].sum().idxmax()
attr = left.selectbox("Attribute", names, key="attr_name")
here = sets[sets["attribute"] == attr]
ds_opts = list(here.groupby("dataset")["labelled"].sum().sort_values(ascending=False).index)
if st.session_state.get("attr_dataset") not in ds_opts:
    st.session_state["attr_dataset"] = c.dataset if c.dataset in ds_opts else ds_opts[0]
dataset = mid.selectbox("Dataset", ds_opts, key="attr_dataset")
splits = [s for s in ("test", "val", "train") if s in set(here.loc[here["dataset"] == dataset, "split"])]
split = c.split if c.split in splits or c.split == "*" else splits[0]
right.markdown(f"Split: **{'all' if split == '*' else split}**")
if split != c.split:
    right.caption(f"(no {c.split} rows here)")
st.caption(f"Clean images of **{dataset}**, {'all splits' if split == '*' else f'{split} split'}. "
           + (common.mode_caption(c) if mode == c.mode
              else f"Inference mode **{mode}** (the sidebar's {c.mode} has no attribute rows)")
           + ". Brackets are 95 % bootstrap confidence intervals.")

# ---------------------------------------------------------------------------------------------------- leaderboard
st.subheader(f"Leaderboard: {attr}")
ids = sorted(set(here.loc[here["dataset"] == dataset, "model_id"]))
val = common.run_query(A.attribute_rows, c.db, c.ver, attr, dataset, "val", tuple(ids), mode=mode)
own = A.model_thresholds(ids, c.models, attr, val)
thresholds = tuple((m, own[m][0]) for m in ids)
lb = common.run_query(A.leaderboard, c.db, c.ver, attr, dataset, split, thresholds, mode=mode)
if lb is None or not len(lb):
    st.info("None of these models has labelled images here.")
    st.stop()


def ci(v, lo, hi, pct: bool = True) -> str:
    if pd.isna(v):
        return ""
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3f}")
    return f"{f(v)} [{f(lo)}, {f(hi)}]" if pd.notna(lo) and pd.notna(hi) else f(v)


st.dataframe(pd.DataFrame({
    "model": [c.label(m) for m in lb["model_id"]],
    "threshold": [f"{t:.2f} ({own[m][1]})" for m, t in zip(lb["model_id"], lb["threshold"])],
    "accuracy %": [ci(*v) for v in zip(lb["accuracy"], lb["accuracy_lo"], lb["accuracy_hi"])],
    "balanced acc %": [ci(*v) for v in zip(lb["balanced_accuracy"], lb["balanced_accuracy_lo"],
                                           lb["balanced_accuracy_hi"])],
    "F1": [ci(*v, pct=False) for v in zip(lb["f1"], lb["f1_lo"], lb["f1_hi"])],
    "AUC": [ci(*v, pct=False) for v in zip(lb["roc_auc"], lb["roc_auc_lo"], lb["roc_auc_hi"])],
    "n": lb["n"], "positives": lb["positives"], "id": lb["model_id"],
}), hide_index=True, width="stretch", key="attr_board", column_config={  # fixed widths: fits 1,400 px; id in the data
    "id": None, "model": st.column_config.TextColumn(width=270), "threshold": st.column_config.TextColumn(width=95),
    **{k: st.column_config.TextColumn(width=w) for k, w in (("accuracy %", 105), ("balanced acc %", 105), ("F1", 125),
                                                             ("AUC", 125))},
    "n": st.column_config.NumberColumn(width=40), "positives": st.column_config.NumberColumn(width=60)})
st.caption("Each model decides at its own threshold: chosen on its val predictions in this inference mode (val), "
           "else the one its training chose on plain val (training), else 0.5. Best balanced accuracy first; "
           "balanced accuracy and F1 matter more than accuracy when the attribute is rare, and AUC ignores the "
           "threshold altogether.")

common.glossary("accuracy", "balanced accuracy", "F1", "ROC AUC", "threshold", "TPR", "FPR", "equal opportunity",
                "equalized odds", "95 % CI", "confident learning", "linear probe", "multi-task")
with st.expander("Studies: the seed's CNN vs ImageNet Lite0, fairness strategies, multi-task vs single-task"):
    # Asked for, not drawn on every visit: the tables bootstrap every study model's predictions (~20 s once per DB
    # version on a laptop CPU, then cached), the same tables as the README's.
    if st.toggle("Show the study tables", key="attr_studies_show",
                 help="The same tables as the README (bench readme --update), with 95 % bootstrap CIs. Computed "
                      "once per database version: the first time takes a while."):
        with st.spinner("Bootstrapping the study models' predictions…"):
            studies = common.run_query(A.studies, c.db, c.ver) or {}
        for key, caption in A.STUDY_CAPTIONS.items():
            frame = studies.get(key, {})
            if len(frame.get("rows", [])):
                st.dataframe(pd.DataFrame(frame["rows"]), hide_index=True, width="stretch", key=f"attr_study_{key}")
            st.caption(caption + (f" Not trained or benched yet: {', '.join(frame['missing'])}."
                                  if frame.get("missing") else ""))

# --------------------------------------------------------------------------------------------------- one model
ranked = list(lb["model_id"])
if st.session_state.get("attr_model") not in ranked:
    st.session_state["attr_model"] = c.focus if c.focus in ranked else ranked[0]
model = st.selectbox("Model", ranked, key="attr_model", format_func=c.label)
own_t = own[model][0]
t = st.slider("Decision threshold (present when p ≥ threshold)", 0.0, 1.0, float(round(own_t, 2)), 0.01,
              key=f"attr_threshold_{attr}_{model}",
              help="Starts at the model's own threshold. Everything below follows it: the fairness panel, the "
                   "trade-off marker, the confusion counts, the error gallery and the downloaded labels.")
rows = common.run_query(A.attribute_rows, c.db, c.ver, attr, dataset, split, (model,), mode=mode)
if rows is None:
    st.stop()

fair = common.run_query(A.fairness, c.db, c.ver, attr, dataset, split, model, float(t), mode=mode)
st.subheader("Fairness by " + " and ".join(dict.fromkeys(fair["groups"]["column"]) if fair is not None and
                                           len(fair["groups"]) else ["gender"]))
if fair is None or not len(fair["groups"]):
    st.info("These images carry no gender (or race) labels, so there is no group to compare.")
else:
    cols = list(dict.fromkeys(fair["groups"]["column"]))
    panels = st.columns(len(cols))
    for col, where in zip(cols, panels):
        g = fair["groups"][fair["groups"]["column"] == col]
        where.plotly_chart(charts.attribute_groups(g, f"{attr} by {col} at threshold {t:.2f} (95 % CI)"),
                           width="stretch", key=f"attr_fair_{col}")
        where.caption(f"Accuracy, TPR (share of images with the attribute that are found) and FPR (share without "
                      f"it that are flagged) for each {col} group. Bars of one metric at equal height mean the "
                      "groups are treated alike; whiskers that do not overlap mean the difference is unlikely to "
                      "be noise.")
    gaps = fair["gaps"].copy()
    gaps["gap"] = [ci(v, lo, hi, pct=False) for v, lo, hi in zip(gaps["value"], gaps["lo"], gaps["hi"])]
    gaps["metric"] = gaps["metric"].map({"accuracy": "accuracy gap", "tpr": "TPR gap (equal opportunity)",
                                         "fpr": "FPR gap", "equalized_odds": "equalized odds (max of TPR, FPR gap)"})
    st.dataframe(gaps[["column", "metric", "gap"]], hide_index=True, width="stretch", key="attr_gaps")
    st.caption("A gap is the largest minus the smallest group's value; 0 is parity. An interval that excludes 0 "
               "is a gap the test set can vouch for.")

st.subheader("Threshold trade-off")
by = "gender" if rows["gender"].notna().any() else "race"
sweep = common.run_query(A.tradeoff, c.db, c.ver, attr, dataset, split, model, by, mode=mode)
if sweep is not None and sweep["accuracy"].notna().any():
    st.plotly_chart(charts.threshold_tradeoff(sweep, float(t), float(own_t), by), width="stretch",
                    key="attr_tradeoff")
    st.caption(f"Accuracy (solid) and the {by} gaps (dashed) as the threshold moves; the black line is the slider's "
               "threshold, the dotted one the model's own. A threshold where the gaps fall while accuracy barely "
               "moves buys fairness cheaply.")

st.subheader("Confusion counts")
s = A.decision_summary(rows, t)
table = pd.DataFrame({"predicted present": [s["tp"], s["fp"]], "predicted absent": [s["fn"], s["tn"]]},
                     index=["labelled present", "labelled absent"])
left, right = st.columns([2, 3])
left.dataframe(table, width="stretch", key="attr_confusion")
right.metric("accuracy", f"{100 * s['accuracy']:.1f} %" if pd.notna(s["accuracy"]) else "–")
right.caption(f"TPR {s['tpr']:.3f} · FPR {s['fpr']:.3f} · precision {s['precision']:.3f} · "
              f"{s['n']} labelled images, {s['positives']} with the attribute.")
st.caption("Rows are the labels, columns the model's decisions at the slider's threshold: the diagonal is right, "
           "the top right cell counts attributes missed, the bottom left false alarms.")

override = (st.session_state.get("image_root") or "").strip()  # the sidebar's Settings, as on the Browser


@st.cache_data(show_spinner=False, max_entries=2000)
def thumb(path: str, mtime: float) -> bytes | None:
    return images.thumbnail(path)


def gallery(frame: pd.DataFrame, key: str, caption, how_to_read: str, none: str) -> None:
    """Thumbnails of `frame`'s images (a caption each) and one line on how to read them, or the table when the
    images are not on this machine; `none` when there is no image to show."""
    from pathlib import Path

    if not len(frame):
        st.caption(none)
        return

    from zoo.data.readers import root_problem

    root_of = {}
    for ds in frame["dataset"].unique():
        root_of[ds] = Path(override).expanduser() if override and not root_problem(override) \
            else images.dataset_root(ds)
    if not any(root_of.values()):
        st.info("The images are not on this machine: here is the table. Scan the dataset (`python -m zoo data scan`) "
                "or set **Settings → Dataset image folder** to see thumbnails.")
        st.dataframe(frame, hide_index=True, width="stretch", key=f"{key}_table")
        return
    grid = st.container(horizontal=True, gap="small", key=key)
    for r in frame.itertuples(index=False):
        root = root_of[r.dataset]
        path = images.safe_image_path(root, r.path) if root else None
        cell = grid.container(width=images.THUMB)
        img = thumb(str(path), path.stat().st_mtime) if path else None
        if img is not None:
            cell.image(img, caption=caption(r), width="content")
        else:
            cell.caption(f"{r.image_id}: image not found · {caption(r)}")
    st.caption(how_to_read)


st.subheader("Confident errors")
gallery(A.confident_errors(rows, t, top=12), "attr_errors",
        lambda r: f"{r.error}: p={r.prob:.2f}, label {int(r.label)}",
        "The labelled images the model gets wrong at this threshold, surest first: false positives scored far above "
        "the threshold, false negatives far below. Look for a pattern (lighting, pose, a look-alike attribute) or a "
        "wrong label.", "No labelled image is decided wrong at this threshold.")

st.subheader("Likely mislabelled (test)")
test = rows if split == "test" else common.run_query(A.attribute_rows, c.db, c.ver, attr, dataset, "test",
                                                     (model,), mode=mode)
if test is None or not len(test):
    st.info(f"No test images of {dataset} for this attribute.")
    st.stop()
gallery(A.mislabelled(test, top=12), "attr_mislabelled", lambda r: f"labelled {int(r.label)}, p={r.prob:.2f}",
        "Test images whose label the model disputes most confidently (cleanlab's confident learning on its "
        "out-of-sample probabilities). Most are label noise worth fixing, some are the model's own blind spots; "
        "either way, check them before trusting a metric to the last point.",
        "Confident learning flags no test image as likely mislabelled for this model.")

st.download_button(f"Download test-set labels ({len(test)} images, threshold {t:.2f})", A.labels_csv(test, t),
                   file_name=f"{attr}-{model}-test-labels.csv", mime="text/csv", key="attr_csv")
st.caption("The seed's format: `filename,label` with 1 where this model says the attribute is present and -1 "
           "where it says absent, for every test image of this dataset, decided at the slider's threshold.")
