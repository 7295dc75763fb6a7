"""Compare a photo, answer first: a summary card (consensus age ± spread over the headline models, gender with its
confidence, the best model's answer; with a true age, errors), then each model's age ± uncertainty and P(female)."""
import math
import time

import streamlit as st

from dashboard import charts, common, predict
from dashboard import glossary as G
from dashboard.data import db as DB
from dashboard.data import registry
from zoo import faces as F
from zoo import photos

T0 = time.perf_counter()  # the answer's time, shown under it
MUTED = "#9e9e9e"  # results on the whole image (no face found) are drawn in this grey

st.title("Compare a photo")
st.caption("The photo is decoded in memory and never written to disk. Each face is found and aligned to the zoo's "
           "canonical crop (5 landmarks, the same pipeline the bench and `python -m zoo predict` use), then the "
           "models predict its age (± their own uncertainty) and gender.")

reg_ver = registry.registry_version()
runs, skipped = predict.available_models()
pool = predict.app_pool(reg_ver)  # started with the server or by app.py: the headline models are loading (or loaded)
predict.load_detector()  # faces are found here, in the app: the detector loads while the photo is picked
headline = predict.headline_ids(runs)
labels = common.unique_names({r["id"]: (r.get("name") or r["id"]) for r in runs})
if not any(r["kind"] != "peer" for r in runs):
    st.info("**No zoo model with weights is registered**, so only external peers can run. " + common.TRAIN_HINT)

# ---- which models: the headline set, or the full zoo on request ---------------------------------------------------
ss = st.session_state
top = st.columns([2, 3])
full = top[0].toggle(f"Full zoo ({len(runs)} runnable models)", key="photo_full_zoo",
                     help="Off: the headline models only, the best ensemble and the networks it averages, quick and "
                          "the ones the summary card is about. On: every runnable model, sweeps and external peers "
                          "included (each loads on first use).")
options = [r["id"] for r in runs] if full else [m for m in headline if m in labels]
models_key = "photo_models_all" if full else "photo_models"  # one selection per set: neither overwrites the other
with top[1].expander(f"Models: {len(ss.get(models_key, options))} of {len(options)}"
                     + ("" if full else " headline")):
    picked = st.multiselect("Models", options, default=options, key=models_key, format_func=lambda m: labels[m],
                            label_visibility="collapsed")
    kinds = {r["id"]: r.get("kind") for r in runs}
    st.caption("Headline: " + (f"**{labels[headline[0]]}** (the runnable ensemble with the lowest registered MAE) "
                               "and the networks it averages." if headline and kinds.get(headline[0]) == "ensemble" else
                               "the runnable networks with the lowest registered MAE."))
if skipped:
    with top[1].expander(f"{len(skipped)} registered model{'s' * (len(skipped) != 1)} cannot run here"):
        st.markdown("\n".join(f"- `{m}`: {why}" for m, why in skipped))
loading = st.empty()  # the model pool's loading progress

# ---- the photo -------------------------------------------------------------------------------------------------
MAX_MB = photos.MAX_BYTES // 2**20  # the uploader's own limit (else Streamlit's 200 MB) is the decoder's
upload = st.file_uploader("Upload a photo (JPEG, PNG, WebP, BMP, TIFF)", key="photo_upload", max_upload_size=MAX_MB,
                          help=f"Photos up to {MAX_MB} MB and {photos.MAX_PIXELS / 1e6:.0f} megapixels. A face "
                               "that fills a good part of the frame works best.")
use_cam = st.toggle("Use the camera instead", key="photo_use_camera")
shot = st.camera_input("Take a photo", key="photo_camera") if use_cam else None
src = shot if shot is not None else upload


def show_loading(wait: bool) -> None:
    """The pool's preload as a progress bar; `wait`: keep it moving until the preload is done (a photo uploaded
    meanwhile reruns the page, which ends this loop)."""
    p = pool.progress()
    deadline = time.monotonic() + 600
    while p.total and not p.finished:
        what = "the face detector" if p.current == predict.FACE_DETECTOR else labels.get(p.current, p.current)
        loading.progress(p.done / p.total, text=f"Loading the models in the background: {what} ({p.done}/{p.total}, "
                                                f"{p.seconds:.0f} s). You can upload a photo already.")
        if not wait or time.monotonic() > deadline:
            return
        time.sleep(0.25)
        p = pool.progress()
    if p.total:
        loading.caption(f":material/check_circle: {len(p.models)} models loaded in {p.seconds:.1f} s, ready.")


if src is None:
    st.info("Upload a photo or take one with the camera to compare the models on it.")
    show_loading(wait=True)
    st.stop()
show_loading(wait=False)

try:
    pic = photos.decode_photo(src.getvalue())
except photos.PhotoError as e:
    st.error(str(e))
    st.stop()
except Exception as e:  # anything unforeseen in a decoder: still a message, not a traceback
    st.error(f"This file could not be read as a photo ({type(e).__name__}). Try another JPEG or PNG.")
    st.stop()

notes = []
if pic.orientation != 1:
    notes.append(f"EXIF orientation {pic.orientation} applied")
if pic.converted:
    notes.append(pic.converted)
card = st.container(border=True)  # the answer, filled once the models have run
st.caption(f"{pic.format}, {pic.size[0]} x {pic.size[1]} px" + (f" · {'; '.join(notes)}" if notes else ""))


@st.cache_data(show_spinner=False, max_entries=32)
def find_faces(digest: str, _rgb) -> list:
    return predict.detect_faces(_rgb)


@st.cache_data(show_spinner=False, max_entries=256)
def run_model(model_id: str, reg_ver: str, digest: str, _crop, mc: int, tta: str | None) -> dict:
    return pool.predict(model_id, _crop, mc_dropout=mc, tta=tta)


faces = find_faces(photos.image_digest(pic.rgb), pic.rgb)
left, middle, right = st.columns([3, 2, 3])
left.image(photos.draw_faces(pic.rgb, faces, max_side=600),
           caption=f"{len(faces)} face(s) found (dlib HOG + 5 landmarks)", width=320)
crop, fallback = None, False
if len(faces) > 1:
    k = middle.radio("Several faces: which one?", list(range(1, len(faces) + 1)), key="photo_face",
                  format_func=lambda i: f"face {i} ({faces[i - 1].box[2]:.0f} px wide)")
    crop = F.warp_to_template(pic.rgb, faces[k - 1].landmarks)
elif len(faces) == 1:
    crop = F.warp_to_template(pic.rgb, faces[0].landmarks)
else:
    middle.warning("No face was found in this photo. Try a well-lit, frontal photo where the face fills more of the "
                "frame, or analyse the whole image (the fallback crop the bench uses too; less accurate).")
    if middle.checkbox("Use the whole image", key="photo_whole", help=G.help("fallback crop")):
        crop, fallback = F.fallback_crop(pic.rgb), True
if crop is None:
    st.stop()
right.image(crop, caption="what the models see (then resized to each model's input)"
            + (": the whole image, NO FACE FOUND" if fallback else ": the aligned face"), width=200)

mc = int(ss.get("mc_passes", 10))
tta = None if ss.get("photo_tta", "off") == "off" else ss["photo_tta"]
if not picked:
    st.info("Pick at least one model (the **Models** list above).")
    st.stop()
digest = photos.image_digest(crop)
DB.release()  # do not hold the predictions DB open while the models run
kind_of = {r["id"]: r.get("kind") for r in runs}
done: dict[str, dict] = {}
bar = st.progress(0.0, text="running models…") if len(picked) > 1 else None
# Networks first, then ensembles: an ensemble whose members all ran is combined from their results, not run again.
for k, mid in enumerate(sorted(picked, key=lambda m: kind_of[m] == "ensemble")):
    try:
        ran = {m: r for m, r in done.items() if "error" not in r}
        got = pool.combine(mid, ran) if kind_of[mid] == "ensemble" else None
        done[mid] = got or run_model(mid, reg_ver, digest, crop, mc, tta)
    except Exception as e:  # one broken checkpoint must not hide the others
        done[mid] = {"error": f"{type(e).__name__}: {e}"}
    if bar:
        bar.progress((k + 1) / len(picked), text=f"{k + 1}/{len(picked)} models")
if bar:
    bar.empty()
rows = [{"model_id": m, "label": labels[m], "kind": kind_of[m], **done[m]} for m in picked]

# ---- the answer: the summary card ----------------------------------------------------------------------------------
if fallback:  # next to the numbers, which look as confident as on a face: the models cannot tell
    card.warning("**No face: these are not anyone's age or gender.** The models were run on the whole image and "
                 "answer as if it were a face; their σ and P(female) do not know it is not one, so they can look "
                 "confident. The card, chart and table are greyed out and every row is marked for that reason.",
                 icon=":material/warning:")
a, b, c, d = card.columns([1.1, 1, 1.1, 0.8])
true_age = d.number_input("True age (optional)", min_value=0.0, max_value=120.0, value=None, step=1.0,
                          key="photo_true_age", placeholder="if known",
                          help="Turns every model's answer into its error (predicted − true age) and the card into "
                               "the consensus error. Used on this page only, never stored.")
res = predict.mark_consensus(predict.results_frame(rows), headline, true_age)
best = predict.best_model(runs, picked)
s = predict.summary(res, best, true_age)
if fallback:
    res.insert(1, "input", "whole image, NO FACE")
flag = " (NO FACE)" if fallback else ""
quiet = {"delta_color": "off", "delta_arrow": "off"}  # the deltas are context, not changes
n_net = f"{s['n_age']} model{'s' * (s['n_age'] != 1)}"
spread = "" if math.isnan(s["age_sd"]) else f" ± {s['age_sd']:.1f}"
if true_age is None:
    a.metric("Consensus age" + flag, f"{s['age']:.1f}{spread} y" if s["n_age"] else "–",
             delta=f"mean ± SD of {n_net}", **quiet,
             help=f"The mean of the {n_net} marked 'in consensus' in the table, ± their standard deviation: how "
                  "much independently trained networks disagree on this face (not a confidence interval).")
else:
    a.metric("Consensus error" + flag, f"{s['error']:+.1f} y" if s["n_age"] else "–",
             delta=f"consensus {s['age']:.1f}{spread} y · MAE {s['mae']:.1f}" if s["n_age"] else None, **quiet,
             help=f"The consensus age (mean of {n_net}) minus the true age {true_age:g}: positive = guessed too old. "
                  "MAE: the models' mean absolute error. " + G.help("MAE"))
b.metric("Gender" + flag, f"{s['gender']} · {100 * s['confidence']:.0f} %" if s["n_gender"] else "–",
         delta=f"{s['agree']} of {s['n_gender']} models agree" if s["n_gender"] else None, **quiet,
         help=f"From the mean P(female) = {s['p_female']:.2f} of the same models; confidence = max(p, 1 − p), the "
              "share of their probability on the answer given. 'Agree': models on the same side of 0.5.")
if s["best"]:
    bb = s["best"]
    sex = f"{'female' if bb['p_female'] >= 0.5 else 'male'} {100 * max(bb['p_female'], 1 - bb['p_female']):.0f} %"
    sig = "" if math.isnan(bb["sigma"]) else f" ± {bb['sigma']:.1f}"
    c.metric(("Best model's error" if true_age is not None else "Best model") + flag,
             f"{bb['error']:+.1f} y" if true_age is not None else f"{bb['age']:.1f}{sig} y",
             delta=(f"{bb['age']:.1f} y · " if true_age is not None else "") + sex, **quiet,
             help=f"**{bb['label']}**: of the models shown, the one with the lowest registered MAE (validation, else "
                  "test); ± its total σ. When it is the headline ensemble, its age is the consensus' mean: it "
                  "averages those networks. " + G.help("σ"))
card.caption(f"Consensus of {n_net}" + (f" · best: {s['best']['label']}" if s["best"] else "")
             + f" · answered in {time.perf_counter() - T0:.1f} s")

# ---- every model ---------------------------------------------------------------------------------------------------
ok = res[res["error"].isna()]
if len(ok):
    fig = charts.photo_predictions(ok, on_face=not fallback)
    if s["n_age"]:
        fig.add_vline(x=s["age"], line_dash="dot", line_color=MUTED if fallback else "#2CA02C", row=1, col=1,
                      annotation_text="consensus", annotation_position="bottom right")
    if true_age is not None:
        fig.add_vline(x=true_age, line_color=MUTED if fallback else "black", row=1, col=1,
                      annotation_text="true age", annotation_position="top left")
    common.chart(fig, "Each row is one model. Left: its age (dot) with ±1 total σ (thin bar, its own uncertainty) and "
                      "the MC-Dropout / ensemble part of it (thick red bar); the dotted line is the consensus"
                      + (", the black one the true age" if true_age is not None else "") + ". Right: its P(female); "
                      "past the dashed 0.5 line it says female. Models whose bars do not overlap disagree by more "
                      "than their own uncertainty.", key="photo_chart")

NUM = {"age": "{:.1f}", "age_error": "{:+.1f}", "sigma_aleatoric": "{:.2f}", "sigma_epistemic": "{:.2f}",
       "sigma_tta": "{:.2f}", "sigma_total": "{:.2f}", "gender_prob": "{:.2f}", "seconds": "{:.2f}"}
# What fits a 1,400 px screen: empty columns (TTA off, nothing failed) stay in the data but not on screen.
shown = ["label", "input", "kind", "in_consensus", "age", "age_error", "sigma_total", "sigma_aleatoric",
         "sigma_epistemic", "sigma_tta", "gender_prob", "seconds", "error"]
shown = [k for k in shown if k in res and (k not in ("sigma_tta", "error", "age_error") or res[k].notna().any())]
style = res.style.format({k: v for k, v in NUM.items() if k in res}, na_rep="–")
style = style.format(na_rep="–", subset=[k for k in res if k not in NUM and k != "in_consensus"])
if fallback:  # greyed: every cell, so no number reads as an answer about a face
    style = style.set_properties(color=MUTED)
st.dataframe(style, hide_index=True, width="stretch", key="photo_table", column_order=shown, column_config={
    "label": st.column_config.TextColumn("model", width="medium"),  # long names end in "…" (full on hover)
    "input": st.column_config.TextColumn("input", width="small"),
    "kind": st.column_config.TextColumn("kind", help=G.help("kind")),
    "in_consensus": st.column_config.CheckboxColumn("consensus", help="The rows the summary card averages: the "
                                                    "headline networks (their ensemble averages them already)."),
    "age": st.column_config.NumberColumn("age", help="Predicted age, years (with MC-Dropout, the mean of the passes)."),
    "age_error": st.column_config.NumberColumn("error (y)", help="Predicted − true age: positive = too old. "
                                                + G.help("MAE")),
    "sigma_aleatoric": st.column_config.NumberColumn("σ aleatoric", help=G.help("aleatoric")),
    "sigma_epistemic": st.column_config.NumberColumn("σ epistemic", help=G.help("epistemic")),
    "sigma_tta": st.column_config.NumberColumn("σ TTA", help=G.help("TTA")),
    "sigma_total": st.column_config.NumberColumn("σ total", help=G.help("total (aleatoric ⊕ epistemic)")),
    "gender_prob": st.column_config.NumberColumn("P(female)", help="The model's probability that the face is female "
                                                 "(≥ 0.5: it says female)."),
    "seconds": st.column_config.NumberColumn("s", help="This model's time on this photo (the first photo also pays "
                                             "for loading a model the background preload has not reached)."),
    "error": st.column_config.TextColumn("failed", help="Why this model could not answer."),
})
st.caption(f"One row per model. MC-Dropout passes: {mc} · TTA: {tta or 'off'} (Settings in the sidebar). "
           + ("Error = predicted − true age. " if true_age is not None else "")
           + "σ columns are each model's own uncertainty in years (–: the model has no such estimate). External "
           "peers run their own face pipeline on the crop and have no MC-Dropout."
           + (" Greyed: answers about the whole image, not a face." if fallback else ""))

attrs = predict.attribute_table([r for r in rows if not r.get("error")])
if len(attrs):
    st.subheader("Attribute probabilities")
    st.dataframe(attrs, hide_index=True, width="stretch", key="photo_attributes",
                 column_config={c: st.column_config.ProgressColumn(f"P({c})", min_value=0.0, max_value=1.0,
                                                                   format="%.2f") for c in attrs.columns[1:]})
    st.caption("For the models with attribute heads: the probability that each attribute is present on this face "
               "(blank where a model has no such head). A model decides at its own threshold, on the Attributes "
               "page, not necessarily at 0.5.")
common.glossary("σ", "aleatoric", "epistemic", "MC-Dropout", "TTA", "total (aleatoric ⊕ epistemic)", "ensemble",
                "ensemble spread", "kind", "peer", "fallback crop", "MAE")
