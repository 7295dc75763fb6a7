"""Robustness: what each perturbation does to a face, and MAE (or gender accuracy) vs perturbation severity per
model, on the images every compared model was perturbed on."""
from pathlib import Path

import streamlit as st

from bench.perturb import list_perturbations
from dashboard import charts, common, glossary
from dashboard.data import images, perturbation_examples as PE, queries as Q


@st.cache_data(show_spinner=False, max_entries=8)
def example_grid(path: str | None, mtime: float) -> tuple[list[dict], str | None]:
    """Every registered perturbation at every severity applied to one image (PNG bytes); `path` None or unreadable:
    the drawn face. `mtime` keys the cache to the file's version."""
    img, used = PE.example_image([path])
    return [{**{k: v for k, v in cell.items() if k != "image"}, "png": PE.png(cell["image"])}
            for cell in PE.grid(img)], used


def _example_path(c: common.Ctx, models: tuple) -> Path | None:
    """A readable test image of the evaluation set, from the dataset's folder (Settings → Dataset image folder, or
    its scanned manifest's root); None when the images are not on this machine."""
    rows = common.run_query(Q.browser_rows, c.db, c.ver, models[0], c.dataset, c.split, order="random", limit=12,
                            mode=c.mode)
    if rows is None or not len(rows):
        return None
    override = (st.session_state.get("image_root") or "").strip()
    if override:
        from zoo.data.readers import root_problem

        override = "" if root_problem(override) else override
    for r in rows.itertuples(index=False):
        root = Path(override).expanduser() if override else images.dataset_root(r.dataset)
        path = images.safe_image_path(root, r.path) if root else None
        if path is not None and PE.read_image(path) is not None:
            return path
    return None


def examples(c: common.Ctx, models: tuple, benched: set) -> None:
    st.subheader("What the perturbations look like")
    path = _example_path(c, models)
    cells, used = example_grid(str(path) if path else None, path.stat().st_mtime if path else 0.0)
    src = (f"a test image of the evaluation set (`{Path(used).name}`)" if used else
           "a drawn face (no test image of the evaluation set is readable on this machine: set Settings → Dataset "
           "image folder to see a real one)")
    st.caption(f"Each row: one perturbation (bench/perturb.py) applied to {src} at the bench's {PE.SIZE} px, from "
               "severity 0 (clean) to its strongest; the models saw these pixels resized to their input size. "
               + ("Benchmarked in this mode: " + ", ".join(sorted(benched)) + "." if benched else
                  "None is benchmarked in this mode yet."))
    for name in dict.fromkeys(cell["perturbation"] for cell in cells):
        row = st.container(horizontal=True, gap="small", key=f"rob_ex_{name}")
        for cell in (x for x in cells if x["perturbation"] == name):
            sev, prm = cell["severity"], cell["parameter"]
            label = f"{name} · clean" if sev == 0 else f"{name} · {sev} ({prm})"
            row.container(width=PE.SIZE).image(cell["png"], caption=label, width="content")


c, models = common.analysis_page("Robustness", "robustness")
common.glossary("perturbation", "severity", *list_perturbations(), "MAE", "gender accuracy", "95 % CI", "n")
df = common.run_query(Q.robustness, c.db, c.ver, models, c.dataset, c.split, mode=c.mode)
if df is None or not len(df):
    st.info("No perturbed predictions for the selected models on this evaluation set. Benchmark with perturbations "
            "enabled (each perturbation x severity is one more row per image).")
    examples(c, models, set())
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
                  format_func={"mae": "age MAE", "gender_acc": "gender accuracy"}.get,
                  help=glossary.help("MAE", "gender accuracy"))
what = "age MAE (lower is better; whiskers: 95 % CI)" if metric == "mae" else "gender accuracy (higher is better)"
common.chart(charts.robustness(df, c.names, metric),
             f"One panel per perturbation: each model's {what} as the perturbation gets stronger, from severity 0 "
             "(clean). A flat line is a robust model; a steep one loses accuracy on photos of that kind. What each "
             "severity looks like: the example images at the bottom of the page.",
             key="rob_chart")

st.subheader("Degradation at the highest severity")
top = df.loc[df.groupby(["model_id", "perturbation"])["severity"].idxmax()]
base = df[df["severity"] == 0][["model_id", "perturbation", "mae", "gender_acc"]]
out = top[["model_id", "perturbation", "severity", "n", "mae", "gender_acc"]].merge(
    base, on=["model_id", "perturbation"], how="left", suffixes=("", "_clean"))
out["MAE increase"] = out["mae"] - out["mae_clean"]
out["relative"] = out["mae"] / out["mae_clean"]
out.insert(0, "model", [c.label(m) for m in out["model_id"]])
st.dataframe(out.drop(columns="model_id"), hide_index=True, width="stretch", column_config={
    "perturbation": st.column_config.TextColumn(help=glossary.help("perturbation")),
    "severity": st.column_config.NumberColumn(help=glossary.help("severity")),
    "n": st.column_config.NumberColumn(help=glossary.help("n")),
    "mae": st.column_config.NumberColumn("MAE", format="%.2f", help=glossary.help("MAE")),
    "mae_clean": st.column_config.NumberColumn("MAE clean", format="%.2f",
                                               help="The MAE on the same images unperturbed (severity 0)."),
    "MAE increase": st.column_config.NumberColumn(format="%+.2f", help="MAE at this severity minus MAE clean, in "
                                                                       "years: what the perturbation costs."),
    "relative": st.column_config.NumberColumn("× clean", format="%.2f", help="MAE at this severity ÷ MAE clean."),
    "gender_acc": st.column_config.NumberColumn("gender acc", format="%.3f", help=glossary.help("gender accuracy")),
    "gender_acc_clean": st.column_config.NumberColumn("gender acc clean", format="%.3f",
                                                      help="Gender accuracy on the same images unperturbed."),
})
examples(c, models, set(df["perturbation"]))
