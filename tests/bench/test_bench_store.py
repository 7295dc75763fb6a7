"""The predictions store: atomic parts, idempotent merges, newest-wins metadata, and readers that never fail."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from bench import store

from conftest import REPO  # noqa: E402


def _preds(keys: range, model: str = "m1", run: str = "r1", age: float = 30.0) -> pd.DataFrame:
    n = len(keys)
    return pd.DataFrame({"model_id": model, "dataset": "d", "image_id": [f"img{k:04d}" for k in keys],
                         "perturbation": "none", "severity": 0, "age_pred": age, "sigma_aleatoric": np.nan,
                         "sigma_epistemic": np.nan, "sigma_tta": np.nan, "gender_prob": 0.5,
                         "latency_ms": 1.0, "bench_run": run})


def _count(db: Path, sql: str = "SELECT count(*) FROM predictions") -> int:
    con = store.connect_read(db)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def test_schema_matches_schema_md(tmp_path):
    """Every table and column documented in bench/SCHEMA.md exists with that name."""
    db = store.init_db(tmp_path / "b.duckdb")
    doc = (REPO / "bench" / "SCHEMA.md").read_text()
    con = store.connect_read(db)
    try:
        for table in store.TABLES:
            cols = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
            section = doc.split(f"## {table}")[1].split("\n## ")[0]
            documented = set()
            for line in section.splitlines():
                if line.startswith("| ") and not line.startswith("| column") and not line.startswith("|---"):
                    documented |= {c.strip() for c in line.split("|")[1].split(",")}
            assert documented == cols, (table, documented ^ cols)
    finally:
        con.close()


def test_merge_inserts_each_key_once_and_survives_replayed_parts(tmp_path):
    db = tmp_path / "b.duckdb"
    store.write_part(db, "predictions", _preds(range(0, 50)))
    # A second run racing the first (a run itself computes each key once): overlaps, and the first written wins.
    store.write_part(db, "predictions", _preds(range(25, 75), run="r2", age=99.0))
    store.write_part(db, "predictions", _preds(range(0, 10), model="m2"))
    (store.parts_dir(db) / "predictions" / ".half-written.parquet.tmp").write_bytes(b"PAR1 garbage")  # a killed write
    n = store.merge(db)
    assert n["predictions"] == 85
    assert _count(db) == 85
    assert _count(db, "SELECT count(*) FROM predictions WHERE age_pred = 99") == 25
    assert store.list_parts(db, "predictions") == []
    # A kill between commit and the deletion of the parts: the same parts come back; nothing changes.
    store.write_part(db, "predictions", _preds(range(0, 50)))
    assert store.merge(db)["predictions"] == 0
    assert _count(db) == 85
    assert _count(db, """SELECT count(*) FROM (SELECT model_id, dataset, image_id, perturbation, severity
                         FROM predictions GROUP BY ALL HAVING count(*) > 1)""") == 0


def _attrs(keys: range, run: str = "r1", prob: float = 0.7, names: tuple = ("Eyeglasses", "blond_or_glasses"),
           model: str = "m1") -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"model_id": model, "dataset": "d", "image_id": [f"img{k:04d}" for k in keys],
                                    "perturbation": "none", "severity": 0, "mode": "plain", "attribute": a,
                                    "prob": prob, "label": [[1, 0, None][k % 3] for k in keys], "bench_run": run})
                      for a in names], ignore_index=True)


def test_attribute_rows_merge_once_per_key_with_null_labels(tmp_path):
    """attributes is a `keep` table like predictions: replayed parts, a racing run and small transactions end with
    each (prediction key, attribute) once, the first written kept; a missing label stays NULL."""
    db = tmp_path / "b.duckdb"
    store.write_part(db, "attributes", _attrs(range(0, 30)))
    store.write_part(db, "attributes", _attrs(range(20, 40), run="r2", prob=0.1))  # overlaps 20..29: first wins
    assert store.merge(db)["attributes"] == 80  # one batch: two runs' parts, de-duplicated on the key
    store.write_part(db, "attributes", _attrs(range(0, 30)))  # a kill between commit and deleting the parts
    store.write_part(db, "attributes", _attrs(range(0, 5), model="m2", names=("Smiling",)))
    assert store.merge(db)["attributes"] == 5
    key = ", ".join(store.KEYS["attributes"])
    assert _count(db, "SELECT count(*) FROM attributes") == 85
    assert _count(db, f"SELECT count(*) FROM (SELECT {key} FROM attributes GROUP BY ALL HAVING count(*) > 1)") == 0
    assert _count(db, "SELECT count(*) FROM attributes WHERE prob = 0.1") == 2 * 10  # 30..39 only
    assert _count(db, "SELECT count(*) FROM attributes WHERE label IS NULL") == \
        sum(k % 3 == 2 for k in range(40)) * 2 + sum(k % 3 == 2 for k in range(5))
    assert store.list_parts(db, "attributes") == []


def test_nan_becomes_null_and_small_transactions_still_merge_everything(tmp_path):
    db = tmp_path / "b.duckdb"
    for k in range(6):
        store.write_part(db, "predictions", _preds(range(k * 10, k * 10 + 10)))
    store.merge(db, max_rows=15)  # at most ~15 rows per transaction: several rounds
    assert _count(db) == 60
    assert _count(db, "SELECT count(*) FROM predictions WHERE sigma_tta IS NULL") == 60


def test_models_newest_wins_and_bench_runs_count_their_rows(tmp_path):
    db = tmp_path / "b.duckdb"
    row = {c: None for c, _ in store.TABLES["models"]}
    store.write_part(db, "models", pd.DataFrame([{**row, "model_id": "m1", "name": "old", "img_size": 32}]))
    store.write_part(db, "models", pd.DataFrame([{**row, "model_id": "m1", "name": "new", "img_size": 32}]))
    run = {"run_id": "r1", "started": pd.Timestamp("2026-01-01"), "finished": None, "commit": "abc",
           "device": "cpu", "options": json.dumps({"models": "all"}), "n_rows": 0}
    store.write_part(db, "bench_runs", pd.DataFrame([run]))
    store.write_part(db, "predictions", _preds(range(30)))
    store.merge(db)
    store.write_part(db, "predictions", _preds(range(30, 42)))
    store.write_part(db, "bench_runs", pd.DataFrame([{**run, "finished": pd.Timestamp("2026-01-02")}]))
    store.merge(db)
    con = store.connect_read(db)
    try:
        assert con.execute("SELECT name FROM models").fetchall() == [("new",)]
        n_rows, finished = con.execute("SELECT n_rows, finished FROM bench_runs").fetchone()
        assert n_rows == 42 and finished is not None
        assert json.loads(con.execute("SELECT options FROM bench_runs").fetchone()[0]) == {"models": "all"}
    finally:
        con.close()


def test_query_known_sees_the_db_and_pending_parts(tmp_path):
    db = tmp_path / "b.duckdb"
    cols = ["model_id", "dataset", "image_id", "perturbation", "severity"]
    empty = store.query_known(db, "predictions", cols, "SELECT count(*) AS n FROM known")
    assert empty["n"].iloc[0] == 0  # neither DB nor parts yet
    store.write_part(db, "predictions", _preds(range(10)))
    store.merge(db)
    store.write_part(db, "predictions", _preds(range(10, 15)))
    got = store.query_known(db, "predictions", cols, "SELECT count(*) AS n FROM known")
    assert got["n"].iloc[0] == 15


_HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def test_connect_read_retries_while_a_writer_holds_the_file(tmp_path):
    db = store.init_db(tmp_path / "b.duckdb")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(db), "0.8"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(duckdb.Error) as e:
            duckdb.connect(str(db), read_only=True)  # plain DuckDB fails while the writer holds the file …
        assert store.is_lock_error(e.value)
        with pytest.raises(duckdb.Error):
            store.connect_read(db, retries=0)  # no retries asked: the lock error surfaces
        t = time.monotonic()
        con = store.connect_read(db, timeout=20)  # … connect_read waits for it
        assert time.monotonic() - t > 0.1
        assert con.execute("SELECT count(*) FROM predictions").fetchone()[0] == 0
        con.close()
    finally:
        holder.wait(timeout=20)


_READER = """
import json, sys, time
sys.path.insert(0, sys.argv[3])
from bench.store import connect_read
db, stop = sys.argv[1], sys.argv[2]
import os
queries, errors, counts = 0, [], []
deadline = time.time() + 60
while not os.path.exists(stop) and time.time() < deadline:
    try:
        con = connect_read(db, timeout=30)
        try:
            counts.append(con.execute("SELECT count(*) FROM predictions").fetchone()[0])
            con.execute("SELECT model_id, avg(age_pred) FROM predictions GROUP BY 1").fetchall()
        finally:
            con.close()
        queries += 1
    except Exception as e:
        errors.append(repr(e))
    time.sleep(0.002)
print(json.dumps({"queries": queries, "errors": errors, "counts": counts}))
"""


def test_a_reader_process_never_fails_while_parts_are_merged(tmp_path):
    db = store.init_db(tmp_path / "b.duckdb")
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(db), str(stop), str(REPO)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        for k in range(10):
            store.write_part(db, "predictions", _preds(range(k * 200, (k + 1) * 200)))
            store.merge(db)
            time.sleep(0.05)  # a runner computes between merges: readers get their turn then
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=60)
    res = json.loads(out.strip().splitlines()[-1]) if out.strip() else pytest.fail(err)
    assert res["errors"] == []
    assert res["queries"] >= 5
    assert res["counts"] == sorted(res["counts"])  # a reader sees whole commits only, never a rollback
    assert _count(db) == 2000


def test_a_db_from_before_the_face_columns_is_migrated_and_its_image_rows_refilled(tmp_path):
    """An old file (images without the face pipeline's columns) opens for reading and writing: the columns are added,
    old rows read NULL there, and a newer image row replaces the old one."""
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE images (dataset VARCHAR, image_id VARCHAR, split VARCHAR, age DOUBLE, "
                "PRIMARY KEY (dataset, image_id))")
    con.execute("INSERT INTO images VALUES ('d', 'a', 'test', 30), ('d', 'b', 'test', 40)")
    con.close()
    got = store.query_known(db, "images", ["image_id", "face_found"], "SELECT * FROM known ORDER BY image_id")
    assert list(got["image_id"]) == ["a", "b"] and got["face_found"].isna().all()  # read before any migration
    row = {c: None for c, _ in store.TABLES["images"]}
    row.update(dataset="d", image_id="a", split="test", age=30.0, face_found=True, n_faces=1)
    store.write_part(db, "images", pd.DataFrame([row]))
    store.merge(db)
    rows = _count(db, "SELECT count(*) FROM images"), _count(db, "SELECT count(*) FROM images WHERE face_found")
    assert rows == (2, 1)
    assert _count(db, "SELECT count(*) FROM images WHERE image_id = 'b' AND face_found IS NULL") == 1


def _truncate(part: Path, old: bool = True) -> None:
    """Cut a part in half (a copy that stopped mid-way); `old`: written long enough ago to be no copy in progress."""
    data = part.read_bytes()
    part.write_bytes(data[:len(data) // 2])
    if old:
        t = time.time() - 2 * store.QUARANTINE_AFTER_S
        os.utime(part, (t, t))


def test_a_truncated_part_is_quarantined_and_never_blocks_a_merge_or_a_run(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    store.write_part(db, "predictions", _preds(range(0, 30)))
    bad = store.write_part(db, "predictions", _preds(range(30, 60)))
    store.write_part(db, "predictions", _preds(range(60, 70)))
    _truncate(bad)
    cols = ["model_id", "dataset", "image_id", "perturbation", "severity"]
    # a run's start-up reads the parts first: what is known, not an ArrowInvalid
    assert store.query_known(db, "predictions", cols, "SELECT count(*) AS n FROM known")["n"].iloc[0] == 40
    assert store.list_quarantined(db) == [store.quarantine_dir(db) / "predictions" / bad.name]
    assert "quarantined" in capsys.readouterr().err
    assert store.merge(db)["predictions"] == 40 and _count(db) == 40
    assert store.list_parts(db, "predictions") == []

    # A part still arriving (written just now) is left alone: skipped by this merge, merged once complete.
    young = store.write_part(db, "predictions", _preds(range(70, 80)))
    full = young.read_bytes()
    _truncate(young, old=False)
    assert store.merge(db)["predictions"] == 0 and young.exists() and store.pending_rows(db) == 0
    young.write_bytes(full)
    assert store.merge(db)["predictions"] == 10 and _count(db) == 50
    assert len(store.list_quarantined(db)) == 1


def test_a_part_with_a_sound_footer_but_corrupt_data_is_quarantined(tmp_path):
    db = tmp_path / "b.duckdb"
    store.write_part(db, "predictions", _preds(range(0, 20)))
    bad = store.write_part(db, "predictions", _preds(range(20, 2020), age=np.random.default_rng(0).random()))
    data = bytearray(bad.read_bytes())
    data[8:len(data) // 2] = bytes(len(data) // 2 - 8)  # data pages zeroed, footer intact
    bad.write_bytes(bytes(data))
    assert store.merge(db)["predictions"] == 20 and _count(db) == 20
    assert [p.name for p in store.list_quarantined(db)] == [bad.name]


def test_merge_cli_counts_and_reports_quarantined_parts(tmp_path, capsys):
    from bench.__main__ import main

    db = tmp_path / "b.duckdb"
    for k in range(3):
        store.write_part(db, "predictions", _preds(range(k * 10, k * 10 + 10)))
    _truncate(store.list_parts(db, "predictions")[1])
    assert main(["merge", "--db", str(db)]) == 0  # shards' parts, no DB yet: the merge creates it
    out = json.loads(capsys.readouterr().out)
    assert out["inserted"]["predictions"] == 20 and len(out["quarantined"]) == 1 and _count(db) == 20
    assert main(["status", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["quarantined_parts"] == 1
