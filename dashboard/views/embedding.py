"""Embedding map: each image where the model's penultimate features put it (bench run --embed), coloured by error or
any attribute; lasso or box select images to open them in the Browser; a chosen image's nearest images."""
import numpy as np
import pandas as pd
import streamlit as st

from bench.embedding import nearest
from dashboard import charts, common
from dashboard.data import images, queries as Q

st.title("Embedding map")
c = common.context()
if not common.need_db(c, "the embedding map"):
    st.stop()
maps = common.run_query(Q.embedding_maps, c.db, c.ver)
if maps is None:
    st.stop()
if maps.empty:
    st.info("**No embedding map in this database yet.** A map is stored by the benchmark on request: "
            "`python -m bench run --models ID[,ID…] --datasets utkface:test --embed` projects each model's "
            "penultimate features of the clean images to 2-D (UMAP) and stores one point per image.")
    st.stop()

have = list(dict.fromkeys(maps["model_id"]))
ranked = [m for m in (c.focus, *c.compare) if m in have] + have  # the focus model first, when it has a map
a, b, d = st.columns([3, 1, 2])
model = a.selectbox("Model", list(dict.fromkeys(ranked)), format_func=c.label, key="emb_model",
                    help="Models with a stored map (`bench run --embed`); the sidebar's focus model first")
sets = list(maps.loc[maps["model_id"] == model, "dataset"])
dataset = b.selectbox("Dataset", sets, index=sets.index(c.dataset) if c.dataset in sets else 0, key="emb_dataset")
split = c.split
df = common.run_query(Q.embedding_map, c.db, c.ver, model, dataset, split, mode=c.mode)
if df is not None and not len(df) and split != "*":  # a map of another split than the sidebar's: show it whole
    split = "*"
    df = common.run_query(Q.embedding_map, c.db, c.ver, model, dataset, split, mode=c.mode)
if df is None or not len(df):
    st.info("This map has no images.")
    st.stop()

# colour options: label -> (column, categorical, diverging); only columns with a value somewhere
KNOWN = {
    "absolute error (years)": ("abs_err", False, False), "signed error (predicted − true)": ("err", False, True),
    "true age": ("age", False, False), "predicted age": ("age_pred", False, False),
    "age group": ("age_group", True, False), "gender": ("gender", True, False),
    "gender misclassified": ("gender_wrong", True, False), "race": ("race", True, False),
    "brightness": ("brightness", False, False), "contrast": ("contrast", False, False),
    "blur (log Laplacian variance; low = blurry)": ("log_blur", False, False),
    "JPEG quality": ("jpeg_quality", False, False), "resolution": ("resolution", False, False),
    "face size": ("face_size", False, False), "background clutter": ("background", False, False),
    "face detector score": ("face_score", False, False), "face found": ("face_found", True, False),
    "synthetic": ("is_synthetic", True, False),
}
df["log_blur"] = np.log10(pd.to_numeric(df["blur"], errors="coerce").clip(lower=1e-3))
for col in ("gender_wrong", "face_found", "is_synthetic"):
    df[col] = df[col].map({True: "yes", False: "no"})
fixed = set(Q.EMBEDDING_IMAGE_COLUMNS) | {"dataset", "image_id", "method", "x", "y", "split", "path", "age",
                                          "age_group", "gender", "race", "age_pred", "err", "abs_err", "gender_prob",
                                          "gender_wrong", "log_blur"}
extras = {}
for col in df.columns:  # the images' own labels in `extras` (CelebA's 40 attributes): yes/no when 0/1 (or ±1)
    if col in fixed:
        continue
    vals = set(pd.to_numeric(df[col], errors="coerce").dropna().unique())
    if vals and vals <= {0, 1, -1}:
        df[col] = pd.to_numeric(df[col], errors="coerce").map({1: "yes", 0: "no", -1: "no"})
        extras[f"{col} (label)"] = (col, True, False)
    elif vals:
        extras[f"{col} (label)"] = (col, False, False)
options = {k: v for k, v in {**KNOWN, **extras}.items() if df[v[0]].notna().any()}
colour = d.selectbox("Colour by", list(options), key="emb_colour")
col, categorical, diverging = options[colour]

method = str(df["method"].iloc[0])
n_pred = int(df["age_pred"].notna().sum())
st.caption(f"Model **{c.label(model)}** · **{dataset}**, {'all splits' if split == '*' else f'{split} split'}: "
           f"{len(df):,} clean images, projected by **{method.upper()}** · errors: {common.mode_caption(c)}"
           + ("" if n_pred == len(df) else f" ({n_pred:,} of the images have a prediction in this mode)"))

# ------------------------------------------------------------------------------------------ the chosen image
ids = df["image_id"].astype(str).tolist()
pos = {i: k for k, i in enumerate(ids)}
if st.session_state.get("emb_pick") not in pos:  # default: the model's worst error on this map
    worst = df["abs_err"].idxmax() if df["abs_err"].notna().any() else 0
    st.session_state["emb_pick"] = ids[int(worst)]
k_near = 8
pick = st.session_state["emb_pick"]
near = nearest(df[["x", "y"]].to_numpy(), pos[pick], k_near)
chosen = df.iloc[np.r_[pos[pick], near]]

event = common.chart(
    charts.embedding_map(df, col, colour, categorical, f"{c.label(model)} — {dataset} ({method.upper()})",
                         highlight=chosen, diverging=diverging),
    f"One dot per image, placed by the model's penultimate features ({method.upper()} to 2-D): images close together "
    "look alike to the model, so a cluster of one colour is a kind of image it treats alike; a cluster of high error "
    "is a weak spot. Axes have no units. Click a dot to see its nearest images below; box- or lasso-select dots to "
    "open them in the Browser. Rings: the chosen image and its nearest.",
    key="emb_chart", on_select="rerun", selection_mode=("points", "box", "lasso"))

keys = common.selected_images(event)


def to_browser(selected: list, source: str) -> None:
    """The images become the Browser's selection (the `browser_selection` its slice links fill too)."""
    st.session_state["browser_selection"] = {"model": model, "keys": selected, "source": source,
                                             "dataset": dataset, "split": split}


click = keys[0][1] if len(keys) == 1 else None
if click != st.session_state.get("emb_click"):  # a new click (the chart keeps its selection across reruns)
    st.session_state["emb_click"] = click
    if click in pos and click != pick:  # that image becomes the chosen one
        st.session_state["emb_pick"] = click
        st.rerun()
if len(keys) > 1:
    to_browser(keys, "selected on the Embedding map")
    sel = df[df["image_id"].astype(str).isin({i for _, i in keys})]
    parts = [f"**{len(sel)}** images selected"]
    if sel["abs_err"].notna().any():
        parts.append(f"MAE {sel['abs_err'].mean():.2f} (whole map {df['abs_err'].mean():.2f}), "
                     f"bias {sel['err'].mean():+.2f}")
    if sel["age"].notna().any():
        parts.append(f"mean true age {sel['age'].mean():.0f} (map {df['age'].mean():.0f})")
    if (sel["gender"] != "unknown").any():
        parts.append(f"{(sel['gender'] == 'female').mean():.0%} female (map {(df['gender'] == 'female').mean():.0%})")
    st.success(" · ".join(parts) + ". They are now the Browser's selection.")
    st.page_link("views/browser.py", label="Open them in the Browser", icon=":material/photo_library:")

# ------------------------------------------------------------------------------------------ nearest images
st.subheader("Nearest images")
e1, e2 = st.columns([3, 1])
pick = e1.selectbox("Image", ids, key="emb_pick",
                    help="Click a dot on the map, or pick an image id (default: the model's worst error here)")
k_near = e2.number_input("How many", 1, 48, k_near, key="emb_k")
near = nearest(df[["x", "y"]].to_numpy(), pos[pick], int(k_near))
rows = df.iloc[np.r_[pos[pick], near]].copy()
rows["distance"] = np.hypot(rows["x"] - rows["x"].iloc[0], rows["y"] - rows["y"].iloc[0])
root = images.dataset_root(dataset)
shown = 0
if root is not None:
    grid = st.container(horizontal=True, gap="small", key="emb_grid")
    for r in rows.itertuples(index=False):
        path = images.safe_image_path(root, r.path) if isinstance(r.path, str) else None
        img = images.thumbnail(path) if path and path.is_file() else None
        if img is None:
            continue
        cap = ("chosen · " if r.image_id == pick else "") + (
            f"true {r.age:.0f} → {r.age_pred:.1f}" if r.age == r.age and r.age_pred == r.age_pred else str(r.image_id))
        grid.container(width=images.THUMB).image(img, caption=cap, width="content")
        shown += 1
table = rows[["image_id", "distance", "age", "age_pred", "err", "gender", "race", "split"]]
st.dataframe(table, hide_index=True, width="stretch", key="emb_near", column_config={
    "distance": st.column_config.NumberColumn("distance on the map", format="%.2f"),
    "age": st.column_config.NumberColumn("true age", format="%.0f"),
    "age_pred": st.column_config.NumberColumn("predicted", format="%.1f"),
    "err": st.column_config.NumberColumn("pred − true", format="%+.1f")})
st.caption(f"The chosen image (first row) and its {len(rows) - 1} nearest on the map: where this model's features put "
           "them close, so they look alike to it. Nearest on the 2-D map, which UMAP builds to keep each image's "
           "feature-space neighbours close; PCA maps keep only the broad layout. "
           + (f"{shown} thumbnails shown." if root is not None else
              "Thumbnails appear when the dataset is on this machine (Settings → Dataset image folder, or "
              "`python -m zoo data scan`)."))
if st.button("Open these in the Browser", key="emb_near_browser", icon=":material/photo_library:"):
    to_browser(list(zip(rows["dataset"].astype(str), rows["image_id"].astype(str))), f"nearest to {pick} on the map")
    st.switch_page("views/browser.py")
common.glossary("embedding map", "UMAP", "PCA", "MAE")
