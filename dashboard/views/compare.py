"""Compare a photo: upload or take a photo; every available model's age ± uncertainty and gender probability."""
import streamlit as st

from dashboard import charts, common, predict
from dashboard.data import db as DB
from dashboard.data import registry
from zoo import faces as F
from zoo import photos

st.title("Compare a photo")
st.caption("The photo is decoded in memory and never written to disk. Each face is found and aligned to the zoo's "
           "canonical crop (5 landmarks, the same pipeline the bench and `python -m zoo predict` use), then every "
           "registered model with weights predicts age (± MC-Dropout / aleatoric σ) and P(female).")

runs, skipped = predict.available_models()
if not any(r["kind"] != "peer" for r in runs):
    st.info("**No zoo model with weights is registered**, so only external peers can run. " + common.TRAIN_HINT)
    if skipped:
        st.caption("Registered but not runnable: " + "; ".join(f"`{m}` ({why})" for m, why in skipped))


@st.cache_data(show_spinner=False, max_entries=256)
def run_model(model_id: str, reg_ver: str, digest: str, _crop, mc: int, tta: str | None) -> dict:
    return predict.predict_one(common.model_pool(reg_ver).get(model_id), _crop, mc_dropout=mc, tta=tta)


reg_ver = registry.registry_version()
MAX_MB = photos.MAX_BYTES // 2**20  # the uploader's own limit (else Streamlit's 200 MB) is the decoder's
upload = st.file_uploader("Upload a photo (JPEG, PNG, WebP, BMP, TIFF)", key="photo_upload", max_upload_size=MAX_MB,
                          help=f"Photos up to {MAX_MB} MB and {photos.MAX_PIXELS / 1e6:.0f} megapixels. A face "
                               "that fills a good part of the frame works best.")
use_cam = st.toggle("Use the camera instead", key="photo_use_camera")
shot = st.camera_input("Take a photo", key="photo_camera") if use_cam else None
src = shot if shot is not None else upload
if src is None:
    st.info("Upload a photo or take one with the camera to compare the models on it.")
    st.stop()

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
st.caption(f"{pic.format}, {pic.size[0]} x {pic.size[1]} px" + (f" · {'; '.join(notes)}" if notes else ""))


@st.cache_data(show_spinner=False, max_entries=32)
def find_faces(digest: str, _rgb) -> list:
    return F.FacePipeline().detect(_rgb)


faces = find_faces(photos.image_digest(pic.rgb), pic.rgb)
left, mid, right = st.columns([3, 2, 3])
left.image(photos.draw_faces(pic.rgb, faces, max_side=600),
           caption=f"{len(faces)} face(s) found (dlib HOG + 5 landmarks)", width=320)
crop, fallback = None, False
if len(faces) > 1:
    k = mid.radio("Several faces: which one?", list(range(1, len(faces) + 1)), key="photo_face",
                  format_func=lambda i: f"face {i} ({faces[i - 1].box[2]:.0f} px wide)")
    crop = F.warp_to_template(pic.rgb, faces[k - 1].landmarks)
elif len(faces) == 1:
    crop = F.warp_to_template(pic.rgb, faces[0].landmarks)
else:
    mid.warning("No face was found in this photo. Try a well-lit, frontal photo where the face fills more of the "
                "frame, or analyse the whole image (the fallback crop the bench uses too; less accurate).")
    if mid.checkbox("Use the whole image", key="photo_whole"):
        crop, fallback = F.fallback_crop(pic.rgb), True
if crop is None:
    st.stop()
right.image(crop, caption="what the models see (then resized to each model's input)"
            + (": the whole image, NO FACE FOUND" if fallback else ": the aligned face"), width=200)

ss = st.session_state
mc = int(ss.get("mc_passes", 10))
tta = None if ss.get("photo_tta", "off") == "off" else ss["photo_tta"]
labels = {r["id"]: (r.get("name") or r["id"]) for r in runs}
picked = st.multiselect("Models", list(labels), default=list(labels), key="photo_models",
                        format_func=lambda m: labels[m])
if not picked:
    st.info("Pick at least one model.")
    st.stop()
digest = photos.image_digest(crop)
DB.release()  # do not hold the predictions DB open while the models run
rows = []
bar = st.progress(0.0, text="running models…") if len(picked) > 1 else None
for k, mid in enumerate(picked):
    rec = next(r for r in runs if r["id"] == mid)
    row = {"model_id": mid, "label": labels[mid], "kind": rec.get("kind")}
    try:
        row.update(run_model(mid, reg_ver, digest, crop, mc, tta))
    except Exception as e:  # one broken checkpoint must not hide the others
        row["error"] = f"{type(e).__name__}: {e}"
    rows.append(row)
    if bar:
        bar.progress((k + 1) / len(picked), text=f"{k + 1}/{len(picked)} models")
if bar:
    bar.empty()
res = predict.results_frame(rows)
ok = res[res["error"].isna()]
if fallback:  # next to the numbers, which look as confident as on a face: the models cannot tell
    st.warning("**No face: these are not anyone's age or gender.** The models were run on the whole image and "
               "answer as if it were a face; their σ and P(female) do not know it is not one, so they can look "
               "confident. The chart is greyed out and every row marked for that reason.", icon=":material/warning:")
    res.insert(1, "input", "whole image, NO FACE")
if len(ok):
    st.plotly_chart(charts.photo_predictions(ok, on_face=not fallback), width="stretch", key="photo_chart")
st.dataframe(res.drop(columns=["model_id"]), hide_index=True, width="stretch", key="photo_table", column_config={
    "age": st.column_config.NumberColumn(format="%.1f"),
    "sigma_aleatoric": st.column_config.NumberColumn("σ aleatoric", format="%.2f"),
    "sigma_epistemic": st.column_config.NumberColumn("σ MC-Dropout / ensemble", format="%.2f"),
    "sigma_tta": st.column_config.NumberColumn("σ TTA", format="%.2f"),
    "sigma_total": st.column_config.NumberColumn("σ total", format="%.2f"),
    "gender_prob": st.column_config.NumberColumn("P(female)", format="%.2f"),
    "seconds": st.column_config.NumberColumn("s", format="%.2f"),
})
st.caption(f"MC-Dropout passes: {mc} · TTA: {tta or 'off'} (Settings in the sidebar). External peers run their own "
           "face pipeline on the crop and have no MC-Dropout."
           + (" Not runnable: " + "; ".join(f"{m} ({why})" for m, why in skipped) if skipped else ""))
