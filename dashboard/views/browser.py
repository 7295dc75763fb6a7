"""Browser: worst errors or any filtered slice as a thumbnail grid (images when the dataset is on disk)."""
from pathlib import Path

import streamlit as st

from dashboard import common
from dashboard.data import images, queries as Q

st.title("Browser")
c = common.context()
if not common.need_db(c, "the image browser"):
    st.stop()
focus = c.focus if c.focus in set(c.db_models) else (c.db_models[0] if c.db_models else None)
if focus is None:
    st.info("No benchmarked model to browse.")
    st.stop()

sel = st.session_state.get("browser_selection")
use_sel = False
if sel and sel.get("keys"):
    use_sel = st.toggle(f"Only the {len(sel['keys'])} images selected on the Errors page "
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


THUMB, FULL = 160, 640  # grid width in px; the largest side kept for the full-screen view


@st.cache_data(show_spinner=False, max_entries=2000)
def thumb(path: str, mtime: float) -> bytes | None:
    """The image as JPEG bytes, at its own resolution up to FULL px (Streamlit's full-screen view shows the pixels it
    is given, no more; a pixel-width st.image would be resized to THUMB on the server and shown that small), and at
    least THUMB px wide so that every cell of the grid is the same size."""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_REDUCED_COLOR_2 if Path(path).stat().st_size > 400_000 else cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    k = min(FULL / max(h, w), max(1.0, THUMB / w))
    if k != 1:
        img = cv2.resize(img, (max(1, round(w * k)), max(1, round(h * k))),
                         interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return buf.tobytes() if ok else None


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
    st.caption(f"{shown} of {len(rows)} thumbnails shown. Image roots: "
               + "; ".join(f"{ds}: `{r}` ({why})" for ds, (r, why) in roots.items()))
else:
    st.info("The images are not on this machine, so here is the table. Point **Settings → Dataset image folder** "
            "in the sidebar at the dataset (or scan it with `python -m zoo data scan`) to see thumbnails. "
            + "; ".join(f"{ds}: {why}" for ds, (_, why) in roots.items()))
st.dataframe(rows, hide_index=True, width="stretch", column_config={
    "err": st.column_config.NumberColumn("pred − true", format="%+.1f"),
    "age_pred": st.column_config.NumberColumn("predicted", format="%.1f"),
    "gender_prob": st.column_config.NumberColumn("P(female)", format="%.2f"),
})
