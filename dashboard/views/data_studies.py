"""Data studies: one section per data decision, built from whatever the registry and the DB hold."""
import streamlit as st

from dashboard import charts, common, glossary
from dashboard.data import queries as Q, studies

st.title("Data studies")
c = common.context()
st.caption("Each section compares runs that differ only in that one decision (every other config field equal). "
           "Scores: clean MAE on the test split of the dataset each model trained on — from the bench DB (with "
           "95 % CI) or, for runs not benchmarked yet, from their run.json, both in the one inference mode picked in "
           f"the sidebar. {common.mode_caption(c)}.")

scores = None
if c.has_db:
    scores = common.run_query(Q.clean_scores, c.db, c.ver, "test", mode=c.mode)
frame = studies.study_frame(c.models, scores, c.registry)
if frame.empty:
    st.info("**No trained models yet**, so there is nothing to compare. " + common.TRAIN_HINT + " The default zoo "
            "(`zoo/configs/default_zoo.yaml`) trains every variant these sections need at an equal step budget.")
    if not c.has_db:
        common.need_db(c, "the data studies")
    st.stop()

FACTOR_TERMS = {"augment": "augmentation", "train_fraction": "learning curve", "age_balance": "age balance",
                "gender_balance": "gender balance", "data_source": "data source", "init": "init"}
common.glossary("MAE", "gender accuracy", "95 % CI", *FACTOR_TERMS.values(), "inv_freq", "sqrt_inv", "lds",
                "balanced_sampler", "undersample", "reweight", "label fidelity", "gender agreement", "Fréchet distance",
                "AdaBN")
metric = st.radio("Metric", ["mae", "gender_acc"], horizontal=True, key="ds_metric",
                  format_func={"mae": "age MAE", "gender_acc": "gender accuracy"}.get,
                  help=glossary.help("MAE", "gender accuracy"))

for factor, (title, expected, numeric) in studies.STUDY_FACTORS.items():
    st.subheader(title, help=glossary.help(FACTOR_TERMS[factor]) if factor in FACTOR_TERMS else None)
    res = studies.study(frame, factor)
    rows = res["rows"]
    if len(rows) and rows[metric].notna().any():
        better = "lower" if metric == "mae" else "higher"
        common.chart(charts.study_chart(rows, factor, metric, numeric=numeric, order=expected),
                     f"Each point: one run's {'age MAE' if metric == 'mae' else 'gender accuracy'} ({better} is "
                     f"better, whiskers: 95 % CI) at one value of {factor}. Points of one colour differ only in "
                     f"{factor}, so compare within a colour; overlapping whiskers mean no clear effect.",
                     key=f"ds_{factor}")
        with st.expander("Runs in this comparison"):
            st.dataframe(rows[["label", factor, "group", "mae", "mae_lo", "mae_hi", "gender_acc", "origin",
                               "model_id"]], hide_index=True, width="stretch")
    elif res["all_values"]:
        st.info(f"Registered runs use {factor} = {', '.join(map(str, res['all_values']))}, but no two of them differ "
                f"only in {factor}, so there is no controlled comparison yet.")
    if res["missing"]:
        st.warning(f"**Not trained yet:** {factor} = {', '.join(map(str, res['missing']))}"
                   + ("." if factor != "data_source" else
                      " (synthetic data: `python -m synth`, then train with `source: synth:<id>` or "
                      "`mixed:<fraction>:<id>`, e.g. `zoo/configs/synth_study.yaml`)."))
    elif len(rows):
        st.caption(f"All of {', '.join(map(str, expected))} are trained.")

st.subheader("Synthetic faces: do they show the age they were asked for?")
sets = studies.synthetic_sets()
if not sets:
    st.info("No synthetic set has been judged yet: `python -m synth sample --generator ID`, then "
            "`python -m synth fidelity --generator ID --model MODEL_ID` (see synth/README.md).")
for k, rec in enumerate(sets):
    syn, real, fd = rec.get("synthetic") or {}, rec.get("real_test") or {}, rec.get("feature_distance") or {}
    st.markdown(f"**{rec['name']}** · generator `{rec.get('generator')}` · judged by `{rec.get('model')}`")
    cols = st.columns(4)
    cols[0].metric("age MAE, intended vs predicted", f"{syn.get('mae', float('nan')):.1f} y",
                   help=glossary.help("label fidelity") + f" The same model on real test faces: "
                                                          f"{real.get('mae', float('nan')):.1f} y.")
    cols[1].metric("gender agreement", f"{100 * syn.get('gender_agreement', float('nan')):.1f} %",
                   help=glossary.help("gender agreement") + " On real test faces: "
                        f"{100 * real.get('gender_agreement', float('nan')):.1f} %.")
    cols[2].metric("Fréchet distance to real test", f"{fd.get('fd_synthetic_vs_real_test', float('nan')):.1f}",
                   help=glossary.help("Fréchet distance") + " Measured on the judging backbone's features.")
    cols[3].metric("real train → real test (baseline)", f"{fd.get('fd_real_train_vs_real_test', float('nan')):.1f}",
                   help="The Fréchet distance between two real sets (train vs test): how close 'close' can be.")
    left, right = st.columns([3, 2])
    if len(rec["per_bin"]):
        common.chart(charts.synthetic_fidelity(rec["per_bin"], "Label fidelity per age bin"),
                     "Per age bin: how far the judging model's age lands from the age each synthetic face was asked "
                     "for (red), beside its error on real test faces of that bin (blue, the floor). Red close to "
                     "blue = the generator draws that age faithfully.", where=left, key=f"ds_synth_{k}")
    if rec["grid_path"] is not None:
        right.image(str(rec["grid_path"]), caption="Samples: one row per age bin (0-2 … 70+), 6 male | 6 female",
                    width="stretch")

st.subheader("Cross-dataset generalisation (with and without AdaBN)")
if scores is None or not len(scores):
    st.info("Cross-dataset results need the bench DB (each model evaluated on several datasets).")
    st.stop()
cd = studies.cross_dataset(frame, scores)
evals = sorted(scores["eval_dataset"].unique())
trains = sorted(frame["train_dataset"].dropna().unique())
left, right = st.columns(2)
if len(cd["plain"]):
    common.chart(charts.heatmap(cd["plain"], "Best single network (no adaptation)"),
                 "MAE of the best single network trained on each dataset (row) when evaluated on each dataset "
                 "(column); green is better. Off the diagonal is the cost of a new dataset.", where=left,
                 key="ds_cross_plain")
if len(cd["adabn"]):
    common.chart(charts.heatmap(cd["adabn"], "Best AdaBN-adapted network"),
                 "The same after AdaBN (BatchNorm statistics re-estimated on the target dataset's unlabelled "
                 "images): cells greener than on the left are gaps AdaBN closed.", where=right, key="ds_cross_adabn")
else:
    right.warning("**No AdaBN-adapted models benchmarked yet.** Create one with "
                  "`python -m zoo adapt MODEL_ID --to appa` and benchmark it on the target dataset.")
if len(evals) < 2:
    st.warning(f"Models were evaluated on {', '.join(evals)} only: benchmark them on other datasets (appa, fgnet, "
               "fairface) to fill the matrix.")
if len(trains) < 2:
    st.caption(f"Every model was trained on {', '.join(trains) or 'one dataset'}; rows for other training datasets "
               "appear once such runs exist.")
if len(cd["pairs"]):
    st.dataframe(cd["pairs"], hide_index=True, width="stretch", column_config={
        "MAE before": st.column_config.NumberColumn(format="%.2f"),
        "MAE after AdaBN": st.column_config.NumberColumn(format="%.2f"),
        "change": st.column_config.NumberColumn(format="%+.2f"),
    })
