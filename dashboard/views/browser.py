"""Browser: worst errors or any filtered slice as a thumbnail grid (images when the dataset is on disk)."""
from pathlib import Path

import streamlit as st

from dashboard import common
from dashboard.data import flags, images, queries as Q

st.title("Browser")
c = common.context()
if not common.need_db(c, "the image browser"):
    st.stop()
common.glossary("MAE", "aleatoric", "epistemic", "TTA", "MC-Dropout", "brightness", "blur")
focus = c.focus if c.focus in set(c.db_models) else (c.db_models[0] if c.db_models else None)
if focus is None:
    st.info("No benchmarked model to browse.")
    st.stop()

link = {k: st.query_params.get(k) for k in ("slice", "model", "dataset", "split", "mode", "metric")}
if link["slice"] and link["model"] in set(c.db_models) and st.session_state.get("br_link") != link:
    # A slice opened from Slice discovery (its query parameters): its images become the selection, once per link,
    # so the toggle below can still switch it off.
    from dashboard.data import slices

    try:
        conds = slices.parse_spec(link["slice"])
        frame = common.run_query(Q.slice_frame, c.db, c.ver, link["model"], link["dataset"] or "*",
                                 link["split"] or "*", mode=link["mode"] or c.mode)
        if frame is not None:  # None: the DB is locked; the next run tries again
            st.session_state["browser_selection"] = {
                "model": link["model"], "keys": slices.members(frame, conds, link["metric"] or None),
                "source": f"of the slice {slices.describe(conds)}"}
            st.session_state.pop("br_use_sel", None)
            st.session_state["br_link"] = link
    except ValueError as e:
        st.session_state["br_link"] = link
        st.warning(f"The slice link is not understood: {e}")
sel = st.session_state.get("browser_selection")
use_sel = False
if sel and sel.get("keys"):
    use_sel = st.toggle(f"Only the {len(sel['keys'])} images {sel.get('source', 'selected on the Errors page')} "
                        f"(model {c.label(sel['model'])})", value=True, key="br_use_sel")
model = sel["model"] if use_sel else focus
st.caption(f"Model: **{c.label(model)}** · " + common.eval_caption(c))

perts = common.run_query(Q.perturbations, c.db, c.ver, mode=c.mode)
opts = ["none"] + [p for p in (perts["perturbation"] if perts is not None else []) if p != "none"]
a, b, d, e = st.columns([2, 1, 2, 1])
pert = a.selectbox("Images", opts, key="br_pert", format_func=lambda p: "clean" if p == "none" else p)
sev = 0
if pert != "none":
    top = int(perts.loc[perts["perturbation"] == pert, "max_severity"].iloc[0])
    sev = b.number_input("Severity", 1, top, 1, key="br_sev")
order = d.selectbox("Order", ["worst", "best", "most uncertain", "random"], key="br_order")
limit = e.selectbox("Show", [24, 48, 96, 200], index=1, key="br_limit")

filters = []
with st.expander("Filters", expanded=not use_sel):
    cols = st.columns(3)
    for k, name in enumerate(Q.BROWSER_FILTERS):
        order_ = Q.SLICES[name][2]
        if order_ is None:
            vals = common.run_query(Q.slice_metrics, c.db, c.ver, (model,), c.dataset, c.split, name, mode=c.mode)
            order_ = list(dict.fromkeys(vals["slice"])) if vals is not None else []
        v = cols[k % 3].selectbox(name, ["(any)"] + list(order_), key=f"br_f_{name}")
        if v != "(any)":
            filters.append((name, v))

keys = tuple(map(tuple, sel["keys"])) if use_sel else ()
rows = common.run_query(Q.browser_rows, c.db, c.ver, model, c.dataset if not use_sel else "*",
                        c.split if not use_sel else "*", tuple(filters), keys, pert, int(sev), order, int(limit),
                        mode=c.mode)
if rows is None or not len(rows):
    st.info("No images match.")
    st.stop()
st.markdown(f"**{len(rows)}** images · MAE {rows['err'].abs().mean():.2f} · bias {rows['err'].mean():+.2f}")


override = (st.session_state.get("image_root") or "").strip()
if override:
    from zoo.data.readers import root_problem  # the scan's own rule: `/`, a system or home folder is no dataset

    refused = root_problem(override)
    if refused:
        st.warning(f"Settings → Dataset image folder refused: {refused}. Point it at the dataset's own folder; "
                   "meanwhile each dataset's scanned root is used.")
        override = ""


def root_for(dataset: str) -> tuple[Path | None, str]:
    if override:
        return Path(override).expanduser(), "sidebar setting"
    r = images.dataset_root(dataset)
    return (r, "manifest") if r else (None, "no scanned manifest and no shared copy of the dataset")


THUMB = images.THUMB  # grid cell width in px


@st.cache_data(show_spinner=False, max_entries=2000)
def thumb(path: str, mtime: float) -> bytes | None:
    """images.thumbnail (the image at its own resolution up to images.FULL px, at least THUMB wide: Streamlit's
    full-screen view never blows a 160 px thumbnail up, issue 21 B12), cached on the file's mtime."""
    return images.thumbnail(path)


# ------------------------------------------------------------------ the full image, its predictions, label flags
FLAGS = flags.flags_path(c.db)  # the user's own file, next to the bench DB (never the bench DB: it is read-only here)
ATTRS = (  # images column -> (label, format), as bench/SCHEMA.md defines them
    ("split", "split", "{}"), ("path", "file", "{}"), ("race", "race (label)", "{}"),
    ("brightness", "brightness (mean luma 0–255)", "{:.0f}"), ("contrast", "contrast (luma std)", "{:.0f}"),
    ("blur", "blur: Laplacian variance (low = blurry)", "{:.0f}"),
    ("jpeg_quality", "JPEG quality (estimated)", "{:.0f}"), ("resolution", "resolution (shorter side, px)", "{:.0f}"),
    ("framing", "framing", "{}"), ("face_found", "face found by the detector", "{}"),
    ("n_faces", "faces in the file", "{:.0f}"), ("face_score", "face detector score", "{:.2f}"),
    ("face_size", "face size (box side / shorter side)", "{:.2f}"),
    ("background", "background clutter (luma std outside the face)", "{:.0f}"), ("is_synthetic", "synthetic", "{}"),
)


def open_detail(dataset: str, image_id: str) -> None:
    st.session_state["br_detail"] = (dataset, image_id)


def close_detail() -> None:
    st.session_state.pop("br_detail", None)


def open_selected(key: str, frame):
    """A dataframe's on_select callback: the clicked row's image opens in the full-image view."""
    def on_select() -> None:
        picked = st.session_state[key].selection.rows
        if picked and picked[0] < len(frame):
            row = frame.iloc[picked[0]]
            open_detail(str(row["dataset"]), str(row["image_id"]))
    return on_select


def fmt(v, pattern: str = "{}") -> str:
    import numpy as np
    import pandas as pd

    if v is None or (np.isscalar(v) and pd.isna(v)):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    try:
        return pattern.format(v)
    except (ValueError, TypeError):
        return str(v)


def attribute_table(img: dict) -> list[tuple[str, str]]:
    """(attribute, value) rows of one images row: its labels first, then what the bench measured."""
    import json

    lo, hi = img.get("age_min"), img.get("age_max")
    ranged = fmt(lo) != "—" and fmt(hi) != "—" and lo != hi  # a label given as an age range (e.g. Adience)
    age_s = fmt(img.get("age"), "{:.0f}") + (f" (range {lo:.0f}–{hi:.0f})" if ranged else "")
    gender = {0: "male", 1: "female"}.get(img.get("gender"), "—")
    out = [("dataset", img["dataset"]), ("image id", img["image_id"]), ("true age (label)", age_s),
           ("gender (label)", gender)]
    out += [(label, fmt(img.get(col), pattern)) for col, label, pattern in ATTRS if col in img]
    try:
        extras = json.loads(img.get("extras") or "{}")
    except (TypeError, ValueError):
        extras = {}
    if isinstance(extras, dict) and extras:
        on = [k for k, v in extras.items() if v in (1, True)]
        other = {k: v for k, v in extras.items() if v not in (0, 1, True, False, None)}
        if on:
            out.append(("binary labels set", ", ".join(on)))
        out += [(k, fmt(v)) for k, v in other.items()]
    return out


def save_flag(dataset: str, image_id: str, reason: str, note: str) -> None:
    unsaved = st.session_state.setdefault("br_unsaved_flags", {})
    try:
        flags.flag(FLAGS, dataset, image_id, reason, note, bench_db=c.db)
        unsaved.pop((dataset, image_id), None)
        st.session_state["br_flag_msg"] = ("success", f"Flagged {dataset}/{image_id}: {reason}.")
    except flags.FlagStoreError as e:  # kept for this session and in the CSV below: nothing is lost
        import pandas as pd

        unsaved[(dataset, image_id)] = {"dataset": dataset, "image_id": image_id, "reason": reason, "note": note,
                                        "flagged_at": pd.Timestamp.now("UTC").tz_localize(None)}
        st.session_state["br_flag_msg"] = ("error", f"{e} The flag is kept for this session in the list of "
                                                    "flagged labels below: download it as CSV.")


def drop_flag(dataset: str, image_id: str) -> None:
    unsaved = st.session_state.setdefault("br_unsaved_flags", {})
    was_unsaved = unsaved.pop((dataset, image_id), None) is not None
    try:
        flags.unflag(FLAGS, dataset, image_id, bench_db=c.db)
        st.session_state["br_flag_msg"] = ("success", f"Flag removed from {dataset}/{image_id}.")
    except flags.FlagStoreError as e:
        st.session_state["br_flag_msg"] = ("info" if was_unsaved else "error", str(e))


def read_flags():
    import pandas as pd

    try:
        saved, problem = flags.read_flags(FLAGS, bench_db=c.db).assign(saved=True), None
    except flags.FlagStoreError as e:
        saved, problem = pd.DataFrame(columns=[*flags.COLUMNS, "saved"]), str(e)
    unsaved = list(st.session_state.get("br_unsaved_flags", {}).values())
    if unsaved:
        keep = [r for r in unsaved if flags.flag_of(saved, r["dataset"], r["image_id"]) is None]
        saved = pd.concat([pd.DataFrame(keep).assign(saved=False), saved], ignore_index=True)
    return saved[[*flags.COLUMNS, "saved"]], problem


@st.dialog("Image", width="large", on_dismiss=close_detail)
def detail(dataset: str, image_id: str) -> None:
    """The original image file (never a blown-up thumbnail), every compared model's prediction on it, its labels
    and measured attributes, and Flag label."""
    import pandas as pd
    from PIL import Image

    rec = common.run_query(Q.images_by_key, c.db, c.ver, ((dataset, image_id),))
    if rec is None or not len(rec):
        st.warning(f"{dataset}/{image_id} is not in the predictions database.")
        return
    img = rec.iloc[0].to_dict()
    st.markdown(f"**{dataset}** · `{image_id}`")
    left, right = st.columns([2, 3])
    root, why = root_for(dataset)
    path = images.safe_image_path(root, img["path"]) if root else None
    if path is None:
        left.info(f"The image file is not available here ({why if root is None else 'not found inside ' + str(root)}).")
    else:
        try:
            with Image.open(path) as im:
                w, h = im.size
            data = path.read_bytes()
        except OSError as e:
            left.warning(f"Cannot read {path.name}: {e}")
        else:
            small = w < 256  # a 64 px CelebA-HQ crop is shown at 256 px, and says so
            left.image(data, width=256 if small else "content",
                       caption=f"original file, {w}×{h} px" + (f", shown ×{256 / w:.1f}" if small else ""))
    right.dataframe(pd.DataFrame(attribute_table(img), columns=["attribute", "value"]), hide_index=True,
                    width="stretch", height="content", key="br_detail_attrs")

    shown = tuple(dict.fromkeys([model] + [m for m in c.compare if m in set(c.db_models)]))
    preds = common.run_query(Q.image_predictions, c.db, c.ver, dataset, image_id, shown, pert, int(sev),
                             mode=c.mode)
    if preds is not None and len(preds):
        order = {m: k for k, m in enumerate(shown)}
        preds = preds.assign(_o=preds["model_id"].map(order)).sort_values(["perturbation", "_o"]).drop(columns="_o")
        table = pd.DataFrame({
            "model": [c.label(m) for m in preds["model_id"]],
            "image": ["clean" if p == "none" else f"{p} {s}" for p, s in zip(preds["perturbation"], preds["severity"])],
            "age": preds["age_pred"], "error": preds["err"], "σ aleatoric": preds["sigma_aleatoric"],
            "σ epistemic": preds["sigma_epistemic"], "σ TTA": preds["sigma_tta"], "P(female)": preds["gender_prob"]})
        st.dataframe(table.dropna(axis=1, how="all"), hide_index=True, width="stretch", key="br_detail_preds",
                     column_config={"age": st.column_config.NumberColumn(format="%.1f"),
                                    "error": st.column_config.NumberColumn("pred − true", format="%+.1f"),
                                    **{k: st.column_config.NumberColumn(format="%.2f")
                                       for k in ("σ aleatoric", "σ epistemic", "σ TTA", "P(female)")}})
        st.caption(f"Predictions of the browsed model and every compared model ({len(shown)}) in inference mode "
                   f"**{c.mode}**. σ: the model's own uncertainty in years (aleatoric: the noise it expects in the "
                   "label; epistemic: MC-Dropout or ensemble spread; TTA: spread over test-time augmentations); "
                   "empty where the model does not give one.")
    else:
        st.info(f"No prediction of the compared models for this image in mode {c.mode}.")

    msg = st.session_state.pop("br_flag_msg", None)
    if msg:
        getattr(st, msg[0])(msg[1])
    current, _ = read_flags()
    mine = flags.flag_of(current, dataset, image_id)
    if mine:
        st.markdown(f"🚩 **Label flagged** ({mine['reason']}{': ' + mine['note'] if mine.get('note') else ''}) on "
                    f"{pd.Timestamp(mine['flagged_at']):%Y-%m-%d %H:%M} UTC"
                    + ("" if mine.get("saved", True) else " — **not saved**, see below"))
    a, b = st.columns([1, 2])
    reasons = list(flags.REASONS)
    reason = a.selectbox("Reason", reasons, key=f"br_reason/{dataset}/{image_id}",
                         index=reasons.index(mine["reason"]) if mine and mine["reason"] in reasons else 0)
    note = b.text_input("Note (optional)", value=(mine or {}).get("note") or "", max_chars=flags.MAX_NOTE,
                        key=f"br_note/{dataset}/{image_id}", placeholder="e.g. an eye close-up, not a face")
    a, b = st.columns(2)
    if a.button("Update flag" if mine else "Flag label", key="br_flag", type="primary", icon=":material/flag:",
                help=f"Writes to your flags file {FLAGS}, never to the predictions"):
        save_flag(dataset, image_id, reason, note)
        st.rerun()  # the whole page: the list of flagged labels changes too
    if mine and b.button("Unflag", key="br_unflag", icon=":material/outlined_flag:"):
        drop_flag(dataset, image_id)
        st.rerun()


def flag_list() -> None:
    """The flagged labels (saved, and any this session could not save), with their dataset labels and a CSV."""
    flagged, problem = read_flags()
    st.subheader(f"Flagged labels ({len(flagged)})")
    if problem:
        st.warning(problem)
    if not len(flagged):
        st.caption(f"None yet. Open an image (**Details**) and press **Flag label** when its label looks wrong. "
                   f"Flags go to your own file `{FLAGS}` (set `{flags.ENV}` to keep them elsewhere), never to the "
                   "predictions database.")
        return
    labels = common.run_query(Q.images_by_key, c.db, c.ver, tuple(zip(flagged["dataset"], flagged["image_id"])))
    table = flagged
    if labels is not None and len(labels):
        lab = labels[["dataset", "image_id", "split", "path", "age", "gender", "race"]].assign(
            gender=lambda d: d["gender"].map({0: "male", 1: "female"}))
        table = flagged.merge(lab, on=["dataset", "image_id"], how="left")
    st.dataframe(table, hide_index=True, width="stretch", key="br_flags", selection_mode="single-row",
                 on_select=open_selected("br_flags", table), column_config={
                     "flagged_at": st.column_config.DatetimeColumn("flagged (UTC)", format="YYYY-MM-DD HH:mm"),
                     "age": st.column_config.NumberColumn("age label", format="%.0f"),
                     "gender": "gender label", "race": "race label",
                     "saved": st.column_config.CheckboxColumn("saved", help="False: the flags file could not be "
                                                              "written; download the CSV to keep it")})
    st.download_button("Download flagged labels (CSV)", flags.to_csv(table.drop(columns="saved")),
                       file_name=f"{Path(str(FLAGS)).stem}.csv", mime="text/csv", key="br_flags_csv",
                       icon=":material/download:")
    st.caption(f"Kept in your own file `{FLAGS}` (set `{flags.ENV}` to keep it elsewhere), never in the predictions "
               "database. Click a row to open the image and unflag it.")


roots = {ds: root_for(ds) for ds in rows["dataset"].unique()}
shown = 0
if any(r for r, _ in roots.values()):
    # One wrapping row of fixed-width cells: each line of the grid is as tall as its tallest caption, so the lines
    # stay aligned (six st.columns filled in turn let each column drift by its own captions' heights).
    grid = st.container(horizontal=True, gap="small", key="br_grid")
    for r in rows.itertuples(index=False):
        root, _ = roots[r.dataset]
        path = images.safe_image_path(root, r.path) if root else None
        cell = grid.container(width=THUMB)
        cap = (f"true {r.age:.0f} → {r.age_pred:.1f} ({r.err:+.1f})"
               + (f" · P(f) {r.gender_prob:.2f}" if r.gender_prob == r.gender_prob else ""))
        img = thumb(str(path), path.stat().st_mtime) if path else None
        if img is not None:
            cell.image(img, caption=cap, width="content")  # THUMB px in the cell; full screen: its own size
            shown += 1
        else:
            cell.caption(f"{r.image_id}: image not found inside the dataset root · {cap}")
        cell.button("Details", key=f"br_open_{r.dataset}/{r.image_id}", icon=":material/open_in_full:",
                    type="tertiary", on_click=open_detail, args=(r.dataset, r.image_id),
                    help="The original image with every compared model's prediction, its attributes, and Flag label")
    st.caption(f"{shown} of {len(rows)} thumbnails shown. Image roots: "
               + "; ".join(f"{ds}: `{r}` ({why})" for ds, (r, why) in roots.items()))
else:
    st.info("The images are not on this machine, so here is the table. Point **Settings → Dataset image folder** "
            "in the sidebar at the dataset (or scan it with `python -m zoo data scan`) to see thumbnails. "
            + "; ".join(f"{ds}: {why}" for ds, (_, why) in roots.items()))
st.dataframe(rows, hide_index=True, width="stretch", column_config={
    # fits a 1,400 px screen: the file path and every measured attribute are in the image's Details
    "path": None, "split": None, "brightness": None, "blur": None, "jpeg_quality": None,
    "image_id": st.column_config.TextColumn("image", width="small"),
    "err": st.column_config.NumberColumn("pred − true", format="%+.1f"),
    "age_pred": st.column_config.NumberColumn("predicted", format="%.1f"),
    "gender_prob": st.column_config.NumberColumn("P(female)", format="%.2f"),
}, key="br_table", on_select=open_selected("br_table", rows), selection_mode="single-row")
st.caption("Click a row (or **Details** under a thumbnail) to open the image with every compared model's "
           "prediction and its attributes, and to flag a wrong label.")
flag_list()
if st.session_state.get("br_detail"):
    detail(*st.session_state["br_detail"])
