"""One schema (bench.store.TABLES): the demo generator and the dashboard derive from it, and these tests fail when
either drifts from it (each check is also run on a deliberately drifted copy, to show that it can fail)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from bench import store
from bench.perturb import get_perturbation, list_perturbations
from dashboard import demo
from dashboard.data import attributes as A, db as DB, queries as Q
from zoo.data.manifest import AGE_GROUPS
from zoo.data.readers import RACES

from conftest import REPO  # noqa: E402
ALIASES = {"p": "predictions", "i": "images", "m": "models", "a": "attributes",  # the dashboard's SQL aliases
           "e": "embeddings"}
# modules holding the dashboard's SQL (the Attributes page reads its rows through bench.attribute_studies)
QUERY_MODULES = ("dashboard/data/queries.py", "dashboard/data/attributes.py", "bench/attribute_studies.py")


def _describe(db: Path | str) -> dict[str, list[tuple[str, str]]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        return {t: [(r[0], r[1]) for r in con.execute(f"DESCRIBE {t}").fetchall()] for t in tables}
    finally:
        con.close()


def _schema() -> dict[str, list[tuple[str, str]]]:
    """Tables and (column, DuckDB type) as bench.store.TABLES declares them."""
    return {t: [(c, ty.split()[0]) for c, ty in cols] for t, cols in sorted(store.TABLES.items())}


def demo_drift(db: Path | str) -> list[str]:
    """How a demo DB departs from the schema and the vocabularies the bench uses ([] when it does not)."""
    problems = []
    have, want = _describe(db), _schema()
    if set(have) != set(want):
        problems.append(f"tables {sorted(have)} != schema {sorted(want)}")
    for t in set(have) & set(want):
        if have[t] != want[t]:
            problems.append(f"{t}: columns {have[t]} != schema {want[t]}")
    con = duckdb.connect(str(db), read_only=True)
    try:
        for t in set(have) & set(want):  # the generator fills every column (a new one it does not know stays NULL)
            for c, _ in have[t]:
                if con.execute(f'SELECT count("{c}") FROM {t}').fetchone()[0] == 0:
                    problems.append(f"{t}.{c} is NULL in every demo row")
        races = {r[0] for r in con.execute("SELECT DISTINCT race FROM images WHERE race IS NOT NULL").fetchall()}
        if races - set(RACES):
            problems.append(f"races {sorted(races - set(RACES))} are not zoo.data.readers.RACES")
        for name, sev in con.execute("SELECT DISTINCT perturbation, severity FROM predictions").fetchall():
            if name == "none":
                if sev != 0:
                    problems.append(f"clean rows with severity {sev}")
            elif name not in list_perturbations():
                problems.append(f"perturbation {name!r} is not registered in bench.perturb")
            elif not 1 <= sev <= len(get_perturbation(name).severities):
                problems.append(f"{name} severity {sev} is not registered")
        ages = [r[0] for r in con.execute("SELECT DISTINCT age FROM images WHERE age IS NOT NULL").fetchall()]
        empty = [g for lo, hi, g in AGE_GROUPS if not any(lo <= a <= hi for a in ages)]
        if empty:
            problems.append(f"no demo image in age group(s) {empty}")
    finally:
        con.close()
    return problems


def _sql_strings(source: str) -> list[str]:
    """String constants (f-string pieces included) of a module, docstrings left out."""
    tree = ast.parse(source)
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def query_drift(source: str, schema: dict[str, list[tuple[str, str]]]) -> list[str]:
    """`p.col` / `i.col` / `m.col` / `a.col` / `e.col` references in the dashboard's SQL that the schema lacks."""
    cols = {t: {c for c, _ in schema[t]} | {"rowid"} for t in schema}  # DuckDB's row number of every table
    missing = set()
    for s in _sql_strings(source):
        for alias, col in re.findall(r"\b([pimae])\.([A-Za-z_]\w*)", s):
            if col not in cols[ALIASES[alias]]:
                missing.add(f"{alias}.{col} ({ALIASES[alias]})")
    return sorted(missing)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "bench.duckdb"
    demo.write_predictions_db(path, demo.demo_models() + demo.demo_attribute_models(), demo.make_images(400, seed=3),
                              seed=3, pert_images=20)
    return path


def test_demo_db_is_the_schema_with_the_bench_vocabularies(demo_db):
    assert demo_drift(demo_db) == []


def test_demo_drift_is_caught(demo_db, tmp_path, monkeypatch):
    """A drifted demo DB (a hand-written table, an old race label, an unregistered perturbation) fails the check."""
    drifted = tmp_path / "drifted.duckdb"
    drifted.write_bytes(demo_db.read_bytes())
    con = duckdb.connect(str(drifted))
    try:
        con.execute("ALTER TABLE images ADD COLUMN extra_col DOUBLE")
        con.execute("UPDATE images SET race = 'others' WHERE race = 'other'")
        con.execute("UPDATE predictions SET perturbation = 'gaussian_blur' WHERE perturbation = 'blur'")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    problems = " | ".join(demo_drift(drifted))
    assert "images: columns" in problems and "'others'" in problems and "'gaussian_blur'" in problems
    # ... and a schema column the generator does not fill (one added to TABLES, not to the demo) is caught too
    monkeypatch.setitem(store.TABLES, "models", [*store.TABLES["models"], ("new_col", "VARCHAR")])
    again = tmp_path / "again.duckdb"
    demo.write_predictions_db(again, demo.demo_models(3), demo.make_images(60), perturbations={})
    assert "models.new_col is NULL in every demo row" in demo_drift(again)


def test_demo_refuses_perturbations_the_bench_does_not_have(tmp_path):
    with pytest.raises(ValueError, match="unknown perturbation 'gaussian_blur'"):
        demo.write_predictions_db(tmp_path / "x.duckdb", demo.demo_models(1), demo.make_images(20),
                                  perturbations={"gaussian_blur": 2})
    with pytest.raises(ValueError, match="severities"):
        demo.write_predictions_db(tmp_path / "x.duckdb", demo.demo_models(1), demo.make_images(20),
                                  perturbations={"blur": 99})


def test_dashboard_columns_come_from_the_schema():
    source = "\n".join((REPO / m).read_text() for m in QUERY_MODULES)
    assert query_drift(source, _schema()) == []
    assert Q.TABLES == {t: set(store.columns(t)) for t in store.TABLES}  # db_status checks the schema itself
    # A schema without a column the dashboard reads (or a query reading a column the schema lacks) fails:
    dropped = {t: [(c, ty) for c, ty in cols if (t, c) != ("images", "blur")] for t, cols in _schema().items()}
    assert query_drift(source, dropped) == ["i.blur (images)"]
    assert query_drift(source + '\nX = "SELECT p.no_such_col FROM predictions p"\n', _schema()) == \
        ["p.no_such_col (predictions)"]
    no_label = {t: [(c, ty) for c, ty in cols if (t, c) != ("attributes", "label")] for t, cols in _schema().items()}
    assert query_drift(source, no_label) == ["a.label (attributes)"]
    no_x = {t: [(c, ty) for c, ty in cols if (t, c) != ("embeddings", "x")] for t, cols in _schema().items()}
    assert query_drift(source, no_x) == ["e.x (embeddings)"]


def test_every_dashboard_query_runs_on_the_schema(demo_db):
    """Every query (all slices and groupings) binds against a DB made from the schema: a column the dashboard reads
    that the schema does not have fails here, aliased or not."""
    db, ver = str(demo_db), DB.db_version(demo_db)
    assert Q.db_status.raw(db, ver)["state"] == "ok"
    models = tuple(Q.models.raw(db, ver)["model_id"])
    Q.eval_sets.raw(db, ver), Q.perturbations.raw(db, ver), Q.bench_runs.raw(db, ver)
    Q.clean_scores.raw(db, ver), Q.generalization.raw(db, ver)
    assert len(Q.model_scores.raw(db, ver, "utkface", "test")) == len(models)
    for name in Q.SLICES:
        Q.slice_metrics.raw(db, ver, models, "utkface", "test", name)
        Q.error_hist.raw(db, ver, models, "utkface", "test", name)
    for by in ("age group", "gender", "race"):
        Q.group_scores.raw(db, ver, models, "utkface", "test", by)
    for fn in (Q.mae_by_age, Q.uncertainty_summary, Q.risk_coverage_curves, Q.gender_calibration, Q.robustness):
        fn.raw(db, ver, models, "utkface", "test")
    Q.scatter_sample.raw(db, ver, models[0], "utkface", "test", 50)
    Q.browser_rows.raw(db, ver, models[0], "utkface", "test", (("age group", "60+"),), limit=5)
    sets = A.attribute_sets.raw(db, ver)
    assert set(sets["model_id"]) == {m["model_id"] for m in demo.demo_attribute_models()}
    for split in ("test", "*"):
        rows = A.attribute_rows.raw(db, ver, "blond_or_glasses", "utkface", split)
        assert len(rows) and rows["label"].notna().any()
    t = tuple((m, 0.5) for m in sorted(set(sets["model_id"])))
    assert len(A.leaderboard.raw(db, ver, "blond_or_glasses", "utkface", "test", t, n_boot=20)) == len(t)
    assert len(A.fairness.raw(db, ver, "Smiling", "utkface", "test", t[0][0], 0.5, n_boot=20)["groups"])
    A.tradeoff.raw(db, ver, "Eyeglasses", "utkface", "test", t[0][0], thresholds=(0.3, 0.6))
    maps = Q.embedding_maps.raw(db, ver)
    zoo_models = {m["model_id"] for m in demo.demo_models() + demo.demo_attribute_models() if m["source"] != "peer"}
    assert set(maps["model_id"]) == zoo_models and set(maps["dataset"]) == {"utkface", "appa"}
    emb = Q.embedding_map.raw(db, ver, maps["model_id"].iloc[0], "utkface", "test")
    assert len(emb) and emb["abs_err"].notna().all() and {"Smiling", "brightness", "age_group"} <= set(emb.columns)


def _altered_copy(demo_db: Path, tmp_path: Path, sql: str) -> Path:
    """A copy of the demo DB changed by one statement: a DB written by an older version of the schema."""
    old = tmp_path / "old.duckdb"
    old.write_bytes(demo_db.read_bytes())
    con = duckdb.connect(str(old))
    try:
        con.execute(sql)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return old


def test_a_db_from_before_the_attributes_table_is_readable(demo_db, tmp_path):
    """The shipped DB and any other written before attribute heads: still `ok`, and the attribute queries return
    nothing (the next bench write adds the table)."""
    old = _altered_copy(demo_db, tmp_path, "DROP TABLE attributes")
    db, ver = str(old), DB.db_version(old)
    assert Q.db_status.raw(db, ver)["state"] == "ok"
    assert A.attribute_sets.raw(db, ver).empty
    assert A.attribute_rows.raw(db, ver, "Smiling", "utkface", "test").empty
    store.init_db(old)  # what any bench write connection does
    assert store.table_counts(old)["attributes"] == 0


def test_a_db_from_before_the_embeddings_table_is_readable(demo_db, tmp_path):
    """The shipped DB before `bench run --embed` existed: still `ok`, no map (the next bench write adds the table)."""
    old = _altered_copy(demo_db, tmp_path, "DROP TABLE embeddings")
    db, ver = str(old), DB.db_version(old)
    assert Q.db_status.raw(db, ver)["state"] == "ok"
    assert Q.embedding_maps.raw(db, ver).empty
    assert Q.embedding_map.raw(db, ver, "any", "utkface").empty
    store.init_db(old)
    assert store.table_counts(old)["embeddings"] == 0


def test_db_status_names_a_missing_schema_column(demo_db, tmp_path):
    old = _altered_copy(demo_db, tmp_path, "ALTER TABLE images DROP COLUMN face_h")
    st = Q.db_status.raw(str(old), DB.db_version(old))
    assert st["state"] == "invalid" and "images lacks face_h" in st["message"]


def test_one_run_json_to_row_function_with_the_schema_columns():
    from zoo.registry import model_row

    runs = [{"id": "a", "kind": "single", "name": "x/a", "config": {"backbone": "seed_cnn", "formulation": "dldl",
                                                                    "img_size": 32, "dropout": 0.1, "augment": "light",
                                                                    "pretrained": "/p/best.safetensors"},
             "data": {"dataset": "utkface"}, "params": 10, "flops": 20, "infer_img_s": 30.0},
            {"id": "b", "kind": "single", "config": {"dropout": 0.3, "augment": "light"}, "data": {}}]
    ens = {"id": "e", "kind": "ensemble", "name": "ensemble/x", "members": ["a", "b", "gone"], "config": {}}
    by_id = {r["id"]: r for r in runs}
    row = model_row(ens, by_id)
    assert list(row) == store.columns("models") == list(demo.model_row("m"))
    assert (row["name"], row["augment"], row["dropout"]) == ("ensemble/x", "light", None)  # disagreeing -> NULL
    a = model_row(runs[0], by_id)
    assert (a["pretrained"], a["training_data"], a["tasks"]) == ("best.safetensors", "utkface", "age,gender")
    assert json.loads(a["info"]) == runs[0]
    store.to_arrow("models", pd.DataFrame([row, a]))  # the row casts to the schema's types


def test_ddl_lives_only_in_the_schema_module():
    """`CREATE TABLE` appears in bench/store.py only, across the project's code (tests aside)."""
    found = []
    for folder in ("bench", "dashboard", "zoo", "synth", "benchmarks"):
        for f in (REPO / folder).rglob("*.py"):
            if re.search(r"CREATE\s+(OR\s+REPLACE\s+)?TABLE(?!\s+_)", f.read_text(), re.I):
                found.append(str(f.relative_to(REPO)))
    assert found == ["bench/store.py"]
