"""The label-flag store (dashboard.data.flags): its own small DuckDB file next to the bench DB, upserts, unflags,
a clear error when it cannot write, and never a byte of the predictions database touched."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from bench import store
from dashboard.data import flags


def fingerprint(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size


@pytest.fixture
def bench_db(tmp_path, monkeypatch) -> Path:
    """A real predictions DB (the bench's schema, one image and one prediction) in its own artifacts folder."""
    monkeypatch.delenv(flags.ENV, raising=False)
    db = tmp_path / "artifacts" / "bench.duckdb"
    with store.connect_write(db) as con:
        con.execute("INSERT INTO images (dataset, image_id, split, path, age) VALUES ('utk', 'a1', 'test', 'a.jpg', 1)")
        con.execute("INSERT INTO predictions (model_id, dataset, image_id, perturbation, severity, age_pred, mode) "
                    "VALUES ('m', 'utk', 'a1', 'none', 0, 24.0, 'plain')")
    return db


def rows(path: Path) -> list[tuple]:
    return [tuple(r) for r in flags.read_flags(path)[["dataset", "image_id", "reason", "note"]].itertuples(index=False)]


def test_default_location_is_next_to_the_bench_db_and_the_env_var_moves_it(bench_db, monkeypatch, tmp_path):
    assert flags.flags_path(bench_db) == bench_db.parent / "bench.flags.duckdb"
    assert flags.flags_path("/x/preds.duckdb") == Path("/x/preds.flags.duckdb")
    monkeypatch.setenv(flags.ENV, str(tmp_path / "mine" / "flags.duckdb"))
    assert flags.flags_path(bench_db) == tmp_path / "mine" / "flags.duckdb"


def test_flag_upserts_unflag_removes_and_the_bench_db_is_never_touched(bench_db):
    before = fingerprint(bench_db)
    path = flags.flags_path(bench_db)
    assert flags.read_flags(path).empty and list(flags.read_flags(path).columns) == list(flags.COLUMNS)
    assert not flags.unflag(path, "utk", "a1", bench_db=bench_db)
    assert not path.exists(), "reading or unflagging nothing creates no file"

    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    flags.flag(path, "utk", "a1", "wrong age", "eye close-up", bench_db=bench_db, now=t0)
    flags.flag(path, "utk", "a1", "not a face / close-up", "  an   eye\nclose-up ", bench_db=bench_db)
    flags.flag(path, "utk", "b2", "wrong gender", bench_db=bench_db)
    assert sorted(rows(path)) == [("utk", "a1", "not a face / close-up", "an eye close-up"),
                                  ("utk", "b2", "wrong gender", "")], "flagging twice updates the one row"
    got = flags.read_flags(path)
    assert got["flagged_at"].iloc[0] >= got["flagged_at"].iloc[1], "newest first"
    assert flags.flag_of(got, "utk", "a1")["reason"] == "not a face / close-up"
    assert flags.flag_of(got, "utk", "zz") is None

    assert flags.unflag(path, "utk", "a1", bench_db=bench_db)
    assert not flags.unflag(path, "utk", "a1", bench_db=bench_db)
    assert rows(path) == [("utk", "b2", "wrong gender", "")]

    with duckdb.connect(str(path), read_only=True) as con:
        assert [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()] == [
            "label_flags"]
    assert fingerprint(bench_db) == before, "the predictions DB keeps every byte and its mtime"
    assert sorted(p.name for p in bench_db.parent.iterdir()) == ["bench.duckdb", "bench.flags.duckdb"]

    csv = pd.read_csv(io.BytesIO(flags.to_csv(flags.read_flags(path))), keep_default_na=False)
    assert list(csv.columns) == list(flags.COLUMNS) and csv.iloc[0]["image_id"] == "b2"
    assert csv.iloc[0]["flagged_at"].endswith("Z")


def test_the_bench_db_or_any_foreign_db_is_refused_as_the_flags_file(bench_db, monkeypatch, tmp_path):
    before = fingerprint(bench_db)
    monkeypatch.setenv(flags.ENV, str(bench_db))
    with pytest.raises(flags.FlagStoreError, match="predictions database"):
        flags.flag(flags.flags_path(bench_db), "utk", "a1", "wrong age", bench_db=bench_db)
    other = tmp_path / "copy.duckdb"  # another bench DB, not the dashboard's: still not a flags file
    other.write_bytes(bench_db.read_bytes())
    other_before = fingerprint(other)
    for call in (lambda: flags.flag(other, "utk", "a1", "wrong age"), lambda: flags.unflag(other, "utk", "a1"),
                 lambda: flags.read_flags(other)):
        with pytest.raises(flags.FlagStoreError, match="not a label flags file"):
            call()
    assert fingerprint(bench_db) == before and fingerprint(other) == other_before


@pytest.mark.parametrize("how", ["read-only folder", "folder is a file"])
def test_an_unwritable_location_says_what_to_do_and_writes_nothing(bench_db, tmp_path, how):
    if how == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders; the 'folder is a file' case covers the path as root")
        folder = tmp_path / "ro"
        folder.mkdir()
        flags.flag(folder / "flags.duckdb", "utk", "old", "other")  # an existing flag must survive the failure
        folder.chmod(0o555)
        path = folder / "flags.duckdb"
    else:
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("x")
        path = blocker / "flags.duckdb"
    before = fingerprint(bench_db)
    try:
        with pytest.raises(flags.FlagStoreError) as e:
            flags.flag(path, "utk", "a1", "wrong age", bench_db=bench_db)
        msg = str(e.value)
        assert "\n" not in msg and "not writable" in msg and flags.ENV in msg and "untouched" in msg
        if how == "read-only folder":
            assert rows(path) == [("utk", "old", "other", "")], "the earlier flag is still there"
        else:
            assert not path.exists()
    finally:
        if how == "read-only folder":
            path.parent.chmod(0o755)
    assert fingerprint(bench_db) == before


def test_bad_input_is_one_clear_error(tmp_path):
    path = tmp_path / "f.duckdb"
    for args, says in ((("utk", "a1", " "), "reason"), (("", "a1", "wrong age"), "dataset"),
                       (("utk", "a1", "x" * 300), "reason")):
        with pytest.raises(flags.FlagStoreError, match=says):
            flags.flag(path, *args)
    with pytest.raises(flags.FlagStoreError, match="note"):
        flags.flag(path, "utk", "a1", "other", "n" * (flags.MAX_NOTE + 1))
    assert not path.exists()
    path.write_text("not a database")
    with pytest.raises(flags.FlagStoreError, match="Cannot read"):
        flags.read_flags(path)


def test_a_flags_file_held_by_another_process_is_busy_not_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "f.duckdb"
    flags.flag(path, "utk", "a1", "other")
    monkeypatch.setattr(flags, "LOCK_WAIT_S", 0.3)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, time\n"
        f"c = duckdb.connect({str(path)!r})\n"
        "print('ready', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(flags.FlagStoreError, match="busy"):
            flags.flag(path, "utk", "b2", "other")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    flags.flag(path, "utk", "b2", "other")
    assert sorted(r[1] for r in rows(path)) == ["a1", "b2"]
