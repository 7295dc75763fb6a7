"""Generalization: every benched model on every dataset (MAE, gender accuracy, age-vs-Young AUC, with 95 % CIs),
each model beside its AdaBN variant and its single-dataset twin, and how often the face pipeline found a face."""
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, common, glossary
from dashboard.data import queries as Q, registry

st.title("Generalization")
c = common.context()
if not common.need_db(c, "cross-dataset results"):
    st.stop()
g = common.run_query(Q.generalization, c.db, c.ver, c.split, mode=c.mode)
if g is None or not len(g):
    st.info("No clean predictions on this split yet.")
    st.stop()
datasets = sorted(g["eval_dataset"].unique())
st.caption(f"Clean images, **{'all splits' if c.split == '*' else c.split + ' split'}**, every benched dataset. "
           f"{common.mode_caption(c)}. "
           "Faces are aligned by the face pipeline (zoo/faces.py) for datasets framed `detect`; images where no face "
           "was found are predicted on the whole image (the fallback crop) and counted below. Datasets without "
           "ages (CelebA-HQ) score age by how well it ranks the `Young` label (AUC; 0.5 = chance).")

METRICS = {"gender accuracy": ("gender_acc", ".1%"), "age MAE (years)": ("mae", ".2f"),
           "AUC of age for Young": ("young_auc", ".3f")}
common.glossary("MAE", "gender accuracy", "Young AUC", "95 % CI", "faces found", "fallback crop", "AdaBN",
                "single-dataset twin")
metric = st.radio("Metric", list(METRICS), horizontal=True, key="gen_metric",
                  help=glossary.help("gender accuracy", "MAE", "Young AUC"))
col, fmt = METRICS[metric]
ids = [m for m in common.selected(c) if m in set(g["model_id"])] or list(g["model_id"].unique())
show = g[g["model_id"].isin(ids)].copy()
show["model"] = [c.label(m) for m in show["model_id"]]
mat = show.pivot_table(index="model", columns="eval_dataset", values=col, aggfunc="first")
if mat.notna().any().any():
    fig = charts.heatmap(mat, f"{metric}: models (compare set) × datasets", fmt=fmt.replace("%", "")
                         if fmt != ".1%" else ".3f")
    fig.update_yaxes(title="model")
    fig.data[0].hovertemplate = "%{y}<br>on %{x}<br>" + metric + " %{z:" + (".3f" if fmt == ".1%" else fmt) + \
        "}<extra></extra>"
    fig.data[0].colorbar.title = metric
    if col != "mae":  # higher is better: reverse the colours
        fig.data[0].colorscale = "RdYlGn"
    common.chart(fig, f"Each cell: the {metric} of the model (row) evaluated on a dataset's split (column). Green is "
                      "better; a row that turns red on one dataset does not generalise to it. The table below gives "
                      "every number with its 95 % confidence interval.", key="gen_matrix")
else:
    st.info(f"No {metric} for these models: the datasets they were benched on lack the label.")


def ci(v, lo, hi, pct=False) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}")
    return f"{f(v)} [{f(lo)}, {f(hi)}]" + ("%" if pct else "")


def table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": [c.label(m) for m in frame["model_id"]], "dataset": frame["eval_dataset"],
        "images": frame["images"], "faces found": [f"{r:.1%}" if r == r else "" for r in frame["face_found_rate"]],
        "MAE [95 % CI]": [ci(*r) for r in frame[["mae", "mae_lo", "mae_hi"]].to_numpy()],
        "gender acc [95 % CI]": [ci(*r, pct=True) for r in frame[["gender_acc", "gender_acc_lo",
                                                                   "gender_acc_hi"]].to_numpy()],
        "Young AUC [95 % CI]": [ci(*r) for r in frame[["young_auc", "young_auc_lo", "young_auc_hi"]].to_numpy()],
    })


HELP = {"faces found": st.column_config.TextColumn(help=glossary.help("faces found")),
        "MAE [95 % CI]": st.column_config.TextColumn(help=glossary.help("MAE", "95 % CI")),
        "gender acc [95 % CI]": st.column_config.TextColumn(help=glossary.help("gender accuracy", "95 % CI")),
        "Young AUC [95 % CI]": st.column_config.TextColumn(help=glossary.help("Young AUC", "95 % CI"))}
st.dataframe(table(show.sort_values(["eval_dataset", "gender_acc"], ascending=[True, False])), hide_index=True,
             width="stretch", key="gen_table", column_config=HELP)

st.subheader("Side by side: AdaBN variants and single-dataset twins")
rel = registry.relations(c.reg_ver)
rel = rel[rel["model_id"].isin(g["model_id"]) & rel["related"].isin(g["model_id"])]
if not len(rel):
    st.info("None of the benched models has a benched AdaBN variant or single-dataset twin yet "
            "(`python -m zoo adapt ID --to DATASET`, then `python -m bench run`).")
else:
    rows = []
    for r in rel.itertuples():
        for mid, role in ((r.model_id, "model"), (r.related, r.relation)):
            part = g[g["model_id"] == mid].assign(role=role, pair=c.label(r.model_id))
            rows.append(part)
    pairs = pd.concat(rows)
    t = table(pairs)
    t.insert(0, "role", pairs["role"].to_numpy())
    t.insert(0, "pair", pairs["pair"].to_numpy())
    st.dataframe(t, hide_index=True, width="stretch", key="gen_pairs", column_config=HELP)
    st.caption("AdaBN: the same weights with BatchNorm statistics re-estimated on the target dataset's unlabelled "
               "train images. Single-dataset twin: the same recipe and step budget trained on the primary dataset "
               "alone, so the pair shows what the added training data changed.")
found = g.groupby("eval_dataset")["face_found_rate"].first().dropna()
if len(found):
    st.caption("Faces found by the face pipeline: " + " · ".join(f"{d}: {r:.1%}" for d, r in found.items())
               + " (the rest took the fallback crop).")
