"""The predictions store: one DuckDB file (schema in `bench/SCHEMA.md`) fed through atomic Parquet parts.

Why parts: DuckDB lets one process hold a database file for writing and, while it does, no other process can open
it at all (not even read-only). A bench run takes hours, the dashboard reads all the time. So writers never keep the
file open: a runner writes each finished batch as a Parquet file under `<db>.parts/<table>/` (written to a temp
name, then renamed, so a part is either complete or absent), and `merge()` ingests parts in short transactions
(open → insert what is not there yet → commit → delete the merged parts → close), holding the file well under a
second at a time. Readers use `connect_read()`, which retries on the lock error with backoff.

Crash safety: a kill before the rename loses only that part (recomputed next run); a kill between commit and the
deletion of the parts leaves parts whose rows are already in the DB: the next merge skips them (inserts are
anti-joined on the key). Duplicates across parts (two shards, or a re-run racing a merge) are reduced to
one row per key. Hence kill at any point + re-run ⇒ exactly the expected rows.

Unreadable parts (a half-copied shard folder, a disk error) never block a merge or a run: a part whose Parquet
footer or data cannot be read is moved to `<db>.parts/quarantine/<table>/` and reported on stderr. One written in
the last QUARANTINE_AFTER_S seconds may still be being copied in: it is only skipped until then.
"""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from zoo.modes import UNKNOWN, mode_of_options
from zoo.paths import artifacts_dir

# The schema, defined here only: the DDL (`_ddl`), the Parquet parts (`arrow_schema`), the demo database
# (dashboard/demo.py) and the dashboard's checks (dashboard/data/queries.py) all derive from TABLES and KEYS;
# bench/SCHEMA.md documents it and tests/bench/test_bench_schema.py fails when any of them drifts.
TABLES: dict[str, list[tuple[str, str]]] = {
    "models": [
        ("model_id", "VARCHAR PRIMARY KEY"), ("name", "VARCHAR"), ("kind", "VARCHAR"), ("source", "VARCHAR"),
        ("backbone", "VARCHAR"), ("formulation", "VARCHAR"), ("img_size", "INTEGER"), ("tasks", "VARCHAR"),
        ("pretrained", "VARCHAR"), ("augment", "VARCHAR"), ("train_fraction", "DOUBLE"),
        ("age_balance", "VARCHAR"), ("gender_balance", "VARCHAR"), ("training_data", "VARCHAR"),
        ("dropout", "DOUBLE"), ("params", "BIGINT"), ("flops", "BIGINT"), ("infer_img_s", "DOUBLE"),
        ("info", "JSON"),
    ],
    "images": [
        ("dataset", "VARCHAR"), ("image_id", "VARCHAR"), ("split", "VARCHAR"), ("path", "VARCHAR"),
        ("age", "DOUBLE"), ("age_min", "DOUBLE"), ("age_max", "DOUBLE"), ("gender", "TINYINT"),
        ("race", "VARCHAR"), ("extras", "JSON"), ("brightness", "DOUBLE"), ("contrast", "DOUBLE"),
        ("blur", "DOUBLE"), ("jpeg_quality", "DOUBLE"), ("resolution", "INTEGER"), ("face_size", "DOUBLE"),
        ("background", "DOUBLE"), ("is_synthetic", "BOOLEAN"), ("framing", "VARCHAR"), ("face_found", "BOOLEAN"),
        ("n_faces", "INTEGER"), ("face_score", "DOUBLE"), ("face_x", "DOUBLE"), ("face_y", "DOUBLE"),
        ("face_w", "DOUBLE"), ("face_h", "DOUBLE"),
    ],
    "predictions": [
        ("model_id", "VARCHAR"), ("dataset", "VARCHAR"), ("image_id", "VARCHAR"), ("perturbation", "VARCHAR"),
        ("severity", "INTEGER"), ("age_pred", "DOUBLE"), ("sigma_aleatoric", "DOUBLE"),
        ("sigma_epistemic", "DOUBLE"), ("sigma_tta", "DOUBLE"), ("gender_prob", "DOUBLE"),
        ("latency_ms", "DOUBLE"), ("bench_run", "VARCHAR"), ("mode", "VARCHAR"),
    ],
    # One row per (prediction key, attribute) of models with attribute heads (`Predictor.attributes`): long, so a
    # model adds attributes without a schema change. `label` is the image's own (composite targets evaluated from
    # `images.extras` at bench time), NULL where the image lacks it.
    "attributes": [
        ("model_id", "VARCHAR"), ("dataset", "VARCHAR"), ("image_id", "VARCHAR"), ("perturbation", "VARCHAR"),
        ("severity", "INTEGER"), ("mode", "VARCHAR"), ("attribute", "VARCHAR"), ("prob", "DOUBLE"),
        ("label", "TINYINT"), ("bench_run", "VARCHAR"),
    ],
    # The embedding map (`bench.embedding`, `bench run --embed`): one 2-D point per (model, dataset, clean image), a
    # projection of the model's penultimate features fitted over all its benched images of that dataset. x, y are
    # FLOAT (float32): the map is for looking, and this keeps the rows small (SCHEMA.md: size).
    "embeddings": [
        ("model_id", "VARCHAR"), ("dataset", "VARCHAR"), ("image_id", "VARCHAR"), ("method", "VARCHAR"),
        ("x", "FLOAT"), ("y", "FLOAT"),
    ],
    "bench_runs": [
        ("run_id", "VARCHAR PRIMARY KEY"), ("started", "TIMESTAMP"), ("finished", "TIMESTAMP"),
        ("commit", "VARCHAR"), ("device", "VARCHAR"), ("options", "JSON"), ("n_rows", "BIGINT"),
    ],
}
KEYS: dict[str, list[str]] = {
    "models": ["model_id"],
    "images": ["dataset", "image_id"],
    "predictions": ["model_id", "dataset", "image_id", "perturbation", "severity", "mode"],
    "attributes": ["model_id", "dataset", "image_id", "perturbation", "severity", "mode", "attribute"],
    "embeddings": ["model_id", "dataset", "image_id"],
    "bench_runs": ["run_id"],
}
# How a part's row meets an existing row: `keep` the first one written (predictions are pure functions of their
# key), or `replace` it with the newest (a model's metadata, a run's finish time, an image row whose columns added
# later, like the face pipeline's, were filled in by a newer bench; a refitted embedding map).
CONFLICT = {"models": "replace", "images": "replace", "predictions": "keep", "attributes": "keep",
            "embeddings": "replace", "bench_runs": "replace"}
MERGE_ORDER = ("bench_runs", "models", "images", "predictions", "attributes", "embeddings")
# Big `keep` tables without an index (see `_ddl`): merged in row-budgeted batches, de-duplicated on the key whenever
# parts of several runs meet.
UNINDEXED = ("predictions", "attributes")

# What users write themselves, in a file of their own beside the bench DB, never in it: label flags from the Browser
# (dashboard/data/flags.py), one per image.
USER_TABLES: dict[str, list[tuple[str, str]]] = {
    "label_flags": [("dataset", "VARCHAR NOT NULL"), ("image_id", "VARCHAR NOT NULL"),
                    ("flagged_at", "TIMESTAMP NOT NULL"), ("reason", "VARCHAR NOT NULL"), ("note", "VARCHAR")],
}
USER_KEYS: dict[str, list[str]] = {"label_flags": ["dataset", "image_id"]}

LOCK_MARKERS = ("Could not set lock", "Conflicting lock", "database is locked", "different configuration")


def default_db() -> Path:
    return artifacts_dir() / "bench.duckdb"


def parts_dir(db: Path | str) -> Path:
    return Path(f"{db}.parts")


class DBPathError(ValueError):
    """A `--db` path that cannot be used (raised before anything is created)."""


DUCKDB_MAGIC = b"DUCK"  # bytes 8..12 of every DuckDB database file


def is_duckdb_file(path: Path | str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(12)[8:12] == DUCKDB_MAGIC
    except OSError:
        return False


def check_db_path(db: Path | str, write: bool, must_exist: bool) -> Path:
    """`db` as a usable database path, or DBPathError saying why not; creates nothing.

    Not a directory; an existing file must be a DuckDB database; `must_exist`: it must exist (readers, and a merge
    with nothing to ingest); `write`: its folder must exist and accept new files (the DB, `<db>.parts/`)."""
    db = Path(db)
    if db.is_dir():
        raise DBPathError(f"{db} is a directory, not a database file")
    if db.exists():
        if not db.is_file() or not is_duckdb_file(db):
            raise DBPathError(f"{db} is not a DuckDB database file")
        if write and not os.access(db, os.R_OK | os.W_OK):
            raise DBPathError(f"{db} is not writable")
    elif must_exist:
        raise DBPathError(f"no bench database at {db}")
    if write:
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.is_dir():
            raise DBPathError(f"folder {parent} of {db} does not exist")
        try:  # os.access says yes to root everywhere (/proc included): try it
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as e:
            raise DBPathError(f"cannot write in {parent}: {e.strerror or e}") from None
    return db


def _ddl(table: str) -> str:
    cols = ", ".join(f'"{c}" {t}' for c, t in TABLES[table])
    if table == "images":
        # predictions and attributes have no index on purpose: maintaining one on predictions' 6-column key halves
        # the merge rate (measured ~300k vs ~540k rows/s); every insert is anti-joined and de-duplicated on the key
        # instead.
        cols += f", PRIMARY KEY ({', '.join(KEYS[table])})"
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols})"


def user_ddl(table: str) -> str:
    """CREATE TABLE of a USER_TABLES table, keyed (upserts need the primary key)."""
    cols = ", ".join(f'"{c}" {t}' for c, t in USER_TABLES[table])
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({', '.join(USER_KEYS[table])}))"


def is_lock_error(e: BaseException) -> bool:
    return isinstance(e, duckdb.Error) and any(m in str(e) for m in LOCK_MARKERS)


INTENT_TTL = 2.0  # a writer refreshes its intent marker while it waits; an older marker is a dead writer's


def intent_path(db: Path | str) -> Path:
    return Path(f"{db}.write-intent")


def _writer_waiting(path: Path) -> bool:
    try:
        return time.time() - intent_path(path).stat().st_mtime < INTENT_TTL
    except FileNotFoundError:
        return False


def _connect_retry(path: Path, read_only: bool, timeout: float, backoff: float, max_yield: float = 0.5,
                   retries: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open with jittered exponential backoff while another process holds a conflicting lock.

    DuckDB's file lock has no fairness: readers polling back to back could keep a writer out for long. So a writer
    announces itself with an intent marker (refreshed while it waits) and a reader holds back for a waiting writer,
    but for at most `max_yield` seconds, so that back-to-back merges cannot starve readers either."""
    start = time.monotonic()
    deadline = start + timeout
    delay = backoff
    attempts = 0
    while True:
        if read_only and time.monotonic() - start < max_yield and _writer_waiting(path):
            time.sleep(0.005)  # short naps: catch the gap between two merges
            continue
        if not read_only:
            intent_path(path).touch()
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as e:
            attempts += 1
            if not is_lock_error(e) or time.monotonic() + delay > deadline or (retries is not None
                                                                                and attempts > retries):
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 1.5, 0.05 if read_only else 0.02)


def connect_read(path: Path | str | None = None, retries: int | None = None, timeout: float = 30.0,
                 backoff: float = 0.005) -> duckdb.DuckDBPyConnection:
    """A read-only connection for short-lived readers (the dashboard): retries on DuckDB's lock error with jittered
    backoff (at most `retries` times, if given, and for at most `timeout` seconds) while a merge holds the file, and
    yields briefly to a merge waiting for it. Keep it open only for a query or two: an open reader blocks the next
    merge just as a merge blocks readers. Raises FileNotFoundError when there is no DB yet."""
    path = Path(path or default_db())
    if not path.exists():
        raise FileNotFoundError(f"no bench database at {path}; run `python -m bench run` first")
    return _connect_retry(path, True, timeout, backoff, retries=retries)


@contextmanager
def connect_write(path: Path | str | None = None, timeout: float = 300.0,
                  backoff: float = 0.005) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection with the schema in place, as a context manager: the caller keeps it well under a
    second; readers hold back from the moment we start waiting until it is closed."""
    path = Path(path or default_db())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = _connect_retry(path, False, timeout, backoff)
        try:
            _migrate(con)
            yield con
        finally:
            con.close()
    finally:
        intent_path(path).unlink(missing_ok=True)


def _existing_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                                      [table]).fetchall()}


def _add_missing_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """Migrate a DB written before a column existed: the column is added, NULL in old rows. Returns those added."""
    have = _existing_columns(con, table)
    added = []
    for c, t in TABLES[table]:
        if c not in have:
            con.execute(f'ALTER TABLE {table} ADD COLUMN "{c}" {t.split()[0]}')
            added.append(c)
    return added


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    """The schema in place (tables created, missing columns added) and, when `predictions.mode` was just added,
    every old row's mode filled in (`fill_modes`): one transaction, so a kill leaves the old file or the migrated
    one, never a mode column with rows nobody will fill."""
    con.execute("BEGIN TRANSACTION")
    try:
        added = {}
        for t in TABLES:
            con.execute(_ddl(t))
            added[t] = _add_missing_columns(con, t)
        if "mode" in added["predictions"]:
            fill_modes(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def run_modes(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """(run_id, mode) of every bench run in the DB: the mode its `options` asked for (`zoo.modes.mode_of_options`:
    `tta` and `mc_dropout`, the bench's defaults for a key missing; `unknown` when options are NULL or unreadable)."""
    runs = con.execute("SELECT run_id, options FROM bench_runs").fetchall()

    def parse(o):
        try:
            return json.loads(o) if isinstance(o, str) else o
        except ValueError:
            return None

    return pd.DataFrame({"run_id": [r for r, _ in runs], "mode": [mode_of_options(parse(o)) for _, o in runs]},
                        columns=["run_id", "mode"]).astype({"run_id": "string", "mode": "string"})


def fill_modes(con: duckdb.DuckDBPyConnection) -> int:
    """The explicit migration step of `predictions.mode` (idempotent): each row whose mode is NULL (written before
    modes were recorded) gets its bench run's mode (`run_modes`), or `unknown` when its run has no `bench_runs` row
    or no options. Rows that have a mode are never touched. Returns the rows filled."""
    con.register("_run_modes", run_modes(con))
    try:
        n = con.execute("""UPDATE predictions p SET mode = r.mode FROM _run_modes r
                           WHERE p.mode IS NULL AND p.bench_run = r.run_id""").fetchone()[0]
        n += con.execute(f"UPDATE predictions SET mode = '{UNKNOWN}' WHERE mode IS NULL").fetchone()[0]
    finally:
        con.unregister("_run_modes")
    return int(n)


def migrate(path: Path | str | None = None) -> dict[str, int]:
    """Bring a DB to the current schema (what every write connection does) and fill any NULL `mode` left (rows
    written by an older bench into a DB already migrated); returns the predictions per mode afterwards."""
    path = Path(path or default_db())
    with connect_write(path) as con:
        fill_modes(con)
        return dict(con.execute("SELECT mode, count(*) FROM predictions GROUP BY mode ORDER BY mode").fetchall())


def init_db(path: Path | str | None = None) -> Path:
    path = Path(path or default_db())
    with connect_write(path):
        pass
    return path


# ---------------------------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------------------------

_ARROW = {"VARCHAR": pa.string(), "JSON": pa.string(), "INTEGER": pa.int32(), "BIGINT": pa.int64(),
          "DOUBLE": pa.float64(), "FLOAT": pa.float32(), "TINYINT": pa.int8(), "BOOLEAN": pa.bool_(),
          "TIMESTAMP": pa.timestamp("us")}


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([(c, _ARROW[t.split()[0]]) for c, t in TABLES[table]])


# Columns a writer may leave out of a part: the merge fills them in (`mode`: the mode of the row's bench run).
FILLED_ON_MERGE = {"predictions": {"mode"}}


def to_arrow(table: str, frame: pd.DataFrame | pa.Table) -> pa.Table:
    """Cast rows to the table's exact column set and types (NaN floats become NULL; a FILLED_ON_MERGE column
    left out is NULL)."""
    schema = arrow_schema(table)
    optional = FILLED_ON_MERGE.get(table, set())
    have = frame.columns if isinstance(frame, pd.DataFrame) else frame.column_names
    missing = [c for c in schema.names if c not in have]
    if [c for c in missing if c not in optional]:
        raise ValueError(f"{table} rows lack columns {[c for c in missing if c not in optional]}")
    if isinstance(frame, pd.DataFrame):
        frame = pa.Table.from_pandas(frame.reindex(columns=schema.names), preserve_index=False)
    for c in missing:
        if c in frame.column_names:
            frame = frame.drop_columns([c])  # all-NaN object column from reindex: typed below
        frame = frame.append_column(c, pa.nulls(frame.num_rows, schema.field(c).type))
    return frame.select(schema.names).cast(schema)


def columns(table: str) -> list[str]:
    """The table's column names, in schema order."""
    return [c for c, _ in TABLES[table]]


def insert(con: duckdb.DuckDBPyConnection, table: str, rows: pd.DataFrame | pa.Table) -> int:
    """Insert rows (cast by `to_arrow` to the table's exact columns and types) through an open write connection
    (`connect_write`), as a process that owns the file does: the demo generator. A bench publishes parts instead."""
    data = to_arrow(table, rows)
    con.register("_insert_rows", data)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _insert_rows")
    finally:
        con.unregister("_insert_rows")
    return data.num_rows


def write_part(db: Path | str, table: str, rows: pd.DataFrame | pa.Table, tag: str = "") -> Path | None:
    """Atomically publish rows for `table` as `<db>.parts/<table>/<time>-<tag>-<rand>.parquet`.

    The name starts with a nanosecond clock so that sorting names orders parts by age (newest wins on `replace`)."""
    data = to_arrow(table, rows)
    if data.num_rows == 0:
        return None
    folder = parts_dir(db) / table
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{tag or 'part'}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"  # hidden and without the .parquet suffix: never globbed by a merge
    pq.write_table(data, tmp, compression="zstd")
    os.replace(tmp, folder / name)
    return folder / name


def list_parts(db: Path | str, table: str) -> list[Path]:
    folder = parts_dir(db) / table
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


QUARANTINE_AFTER_S = 60.0  # an unreadable part younger than this may still be being copied in: skipped, not moved


def quarantine_dir(db: Path | str) -> Path:
    return parts_dir(db) / "quarantine"


def list_quarantined(db: Path | str) -> list[Path]:
    folder = quarantine_dir(db)
    return sorted(folder.glob("*/*.parquet")) if folder.is_dir() else []


def _quarantine(db: Path | str, table: str, part: Path, why: BaseException | str, force: bool = False) -> None:
    """Move an unreadable part aside (reported on stderr), unless it is young enough to be still arriving."""
    try:
        if not force and time.time() - part.stat().st_mtime < QUARANTINE_AFTER_S:
            return
        dest = quarantine_dir(db) / table / part.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
    except FileNotFoundError:
        return  # merged and deleted by another process meanwhile
    msg = " ".join(str(why).split())
    print(f"bench: quarantined unreadable part {part.name} of {table} → {dest} ({msg})", file=sys.stderr, flush=True)


def readable_parts(db: Path | str, table: str, quarantine: bool = True) -> list[tuple[Path, int]]:
    """(part, rows) of the pending parts whose Parquet footer reads; the others are quarantined (or, with
    `quarantine=False`, as readers of the dashboard do, just left out)."""
    out = []
    for p in list_parts(db, table):
        try:
            out.append((p, pq.read_metadata(p).num_rows))
        except FileNotFoundError:
            continue  # merged and deleted meanwhile
        except (pa.ArrowException, OSError) as e:
            if quarantine:
                _quarantine(db, table, p, e)
    return out


def _quarantine_corrupt(db: Path | str, table: str, files: list[Path]) -> bool:
    """After DuckDB failed on `files`: quarantine those whose data does not read in full; True if any was."""
    found = False
    for f in files:
        try:
            pq.read_table(f)
        except FileNotFoundError:
            continue
        except (pa.ArrowException, OSError) as e:
            _quarantine(db, table, f, e, force=True)  # a complete footer: not a copy still in progress
            found = True
    return found


def pending_rows(db: Path | str, table: str = "predictions") -> int:
    return sum(n for _, n in readable_parts(db, table, quarantine=False))


def _sql_list(paths: Iterable[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _missing_values(files: list[Path], column: str) -> bool | None:
    """None when every part has `column` with no NULL (read from the Parquet statistics, not the data); else
    whether any part has the column at all."""
    present, complete = False, True
    for f in files:
        meta = pq.read_metadata(f)
        names = meta.schema.names
        if column not in names:
            complete = False
            continue
        present = True
        i = names.index(column)
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(i).statistics
            if st is None or not st.has_null_count or st.null_count:
                complete = False
    return None if complete else present


def _ingest(con: duckdb.DuckDBPyConnection, table: str, files: list[Path], dedupe: bool) -> int:
    """Insert the parts' rows into `table` inside the caller's transaction; returns rows inserted.

    `keep` tables (predictions, attributes, images): anti-join on the key, so rows already merged (a kill after the
    commit, before the parts were deleted) are skipped. Duplicates *among* the parts need two runs' parts in one
    batch (a run computes each key once, and shards are disjoint): predictions and attributes de-duplicate exactly
    then; images insert without de-duplicating and the caller retries with `dedupe=True` when their primary key
    rejects the batch. `replace` tables (models, bench_runs, embeddings) are small: newest part wins, always."""
    cols = [c for c, _ in TABLES[table]]
    key = KEYS[table]
    col_sql = ", ".join(f'"{c}"' for c in cols)
    cast = {c: f'CAST("{c}" AS {t.split()[0]}) AS "{c}"' for c, t in TABLES[table]}
    if table == "predictions":
        have = _missing_values(files, "mode")
        if have is not None:  # parts of an older bench (no mode column) or rows left without one: their run's mode
            con.register("_run_modes", run_modes(con))
            own = 'CAST("mode" AS VARCHAR), ' if have else ""
            cast["mode"] = (f"coalesce({own}(SELECT r.mode FROM _run_modes r WHERE r.run_id = "
                            f"CAST(\"bench_run\" AS VARCHAR)), '{UNKNOWN}') AS \"mode\"")
    cast_sql = ", ".join(cast.values())
    src = f"read_parquet({_sql_list(files)}, filename=true, union_by_name=true)"
    on = " AND ".join(f"t.{k} = i.{k}" for k in key)
    replace = CONFLICT[table] == "replace"

    def first_per_key(order: str) -> str:
        return (f"SELECT {col_sql} FROM (SELECT {cast_sql}, filename FROM {src}) "
                f"QUALIFY row_number() OVER (PARTITION BY {', '.join(key)} ORDER BY {order}) = 1")

    if replace:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _incoming AS {first_per_key('filename DESC')}")
        if table == "bench_runs":
            # n_rows is the DB's own count (maintained by merge), never a runner's guess: keep the stored value.
            con.execute(f"UPDATE _incoming i SET n_rows = t.n_rows FROM bench_runs t WHERE {on}")
        con.execute(f"DELETE FROM {table} t WHERE EXISTS (SELECT 1 FROM _incoming i WHERE {on})")
        n = con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _incoming").fetchone()[0]
        con.execute("DROP TABLE _incoming")
    elif table == "predictions":
        # Each run's n_rows grows by exactly what was inserted (a recount would rescan the run's rows on every
        # merge). Parts of a single run (the usual case): the insert's own count. Several runs: via a temp table.
        runs = [r[0] for r in con.execute(f"SELECT DISTINCT bench_run FROM read_parquet({_sql_list(files)}, "
                                          "union_by_name=true)").fetchall()]
        rows = first_per_key("filename") if dedupe or len(runs) > 1 else f"SELECT {cast_sql} FROM {src}"
        new = f"SELECT i.* FROM ({rows}) i WHERE NOT EXISTS (SELECT 1 FROM predictions t WHERE {on})"
        if len(runs) == 1:
            n = con.execute(f"INSERT INTO predictions BY NAME {new}").fetchone()[0]
            counts = f"SELECT ?::VARCHAR AS bench_run, {int(n)} AS n"
            params = [runs[0]]
        else:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _new AS {new}")
            n = con.execute("INSERT INTO predictions BY NAME SELECT * FROM _new").fetchone()[0]
            counts, params = "SELECT bench_run, count(*) AS n FROM _new GROUP BY bench_run", []
        con.execute(f"""UPDATE bench_runs b SET n_rows = coalesce(b.n_rows, 0) + c.n FROM ({counts}) c
                        WHERE b.run_id = c.bench_run""", params)
        con.execute("DROP TABLE IF EXISTS _new")
    else:
        several = table in UNINDEXED and con.execute(  # no primary key to reject duplicates: look for them
            f"SELECT count(DISTINCT bench_run) > 1 FROM read_parquet({_sql_list(files)}, union_by_name=true)"
        ).fetchone()[0]
        rows = first_per_key("filename") if dedupe or several else f"SELECT {cast_sql} FROM {src}"
        n = con.execute(f"""INSERT INTO {table} BY NAME SELECT i.* FROM ({rows}) i
                            WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {on})""").fetchone()[0]
    return int(n)


def merge(db: Path | str | None = None, max_rows: int = 200_000, max_files: int = 64,
          timeout: float = 300.0) -> dict[str, int]:
    """Ingest every pending part, in short transactions of at most ~`max_rows` prediction (and attribute) rows each.

    Each round: open the DB → ingest (anti-join on the key) → commit → delete those parts → close. Parts
    are deleted while the file lock is still held, so a concurrent merger never lists a part that another is
    about to delete. Safe to run concurrently with runners writing parts and with other mergers."""
    db = Path(db or default_db())
    inserted = {t: 0 for t in TABLES}
    _sweep_stale_tmp(db)
    while True:
        if not any(list_parts(db, t) for t in MERGE_ORDER) and db.exists():
            return inserted  # nothing pending: don't take the lock at all
        batches: dict[str, list[Path]] = {}
        with connect_write(db, timeout=timeout) as con:
            # List under the lock: another merger cannot delete files we are about to read.
            for table in MERGE_ORDER:
                parts = readable_parts(db, table)
                files = _take(parts, max_rows, max_files) if table in UNINDEXED else [p for p, _ in parts]
                if files:
                    batches[table] = files
            if not batches:
                return inserted
            counts = None
            for dedupe in (False, True):
                con.execute("BEGIN TRANSACTION")
                try:
                    counts = {t: _ingest(con, t, files, dedupe) for t, files in batches.items()}
                    con.execute("COMMIT")
                    break
                except duckdb.ConstraintException:
                    con.execute("ROLLBACK")  # duplicates among the parts: again, de-duplicating
                    if dedupe:
                        raise
                except BaseException as e:
                    try:
                        con.execute("ROLLBACK")
                    except duckdb.Error:
                        pass  # the original error is the one worth reporting
                    # a part with a sound footer but unreadable data: moved aside, and the round is redone
                    if not (isinstance(e, duckdb.Error) and not isinstance(e, duckdb.InterruptException)
                            and not is_lock_error(e)
                            and any([_quarantine_corrupt(db, t, f) for t, f in batches.items()])):
                        raise
                    break
            if counts is None:
                continue
            for t, n in counts.items():
                inserted[t] += n
            for files in batches.values():  # after the commit, before the lock is released (see above)
                for f in files:
                    f.unlink(missing_ok=True)


def _sweep_stale_tmp(db: Path, age_s: float = 3600.0) -> None:
    """Remove temp files of part writes killed mid-way (a live write finishes within seconds, not an hour)."""
    folder = parts_dir(db)
    if not folder.is_dir():
        return
    now = time.time()
    for tmp in folder.glob("*/.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > age_s:
                tmp.unlink()
        except FileNotFoundError:
            pass


def _take(parts: list[tuple[Path, int]], max_rows: int, max_files: int) -> list[Path]:
    """The oldest parts up to a row budget (always at least one), so one transaction stays short."""
    out, rows = [], 0
    for f, n in parts[:max_files]:
        if out and rows + n > max_rows:
            break
        out.append(f)
        rows += n
    return out


# ---------------------------------------------------------------------------------------------------------------
# Reading what is already there
# ---------------------------------------------------------------------------------------------------------------

def _parts_relation(files: list[Path], cols: list[str]) -> str | None:
    if not files:
        return None
    return f"SELECT {', '.join(cols)} FROM read_parquet({_sql_list(files)}, union_by_name=true)"


def query_known(db: Path | str, table: str, cols: list[str], sql_over_known: str,
                frames: dict[str, pd.DataFrame] | None = None, retries: int = 5) -> pd.DataFrame:
    """Run `sql_over_known` where the view `known` holds `cols` of `table` from the DB *and* from pending parts
    (so shards and re-runs skip work that is done but not merged yet). `frames` are registered as views.

    Uses a read-only connection when the DB exists (closed before returning), an in-memory one otherwise. A part
    merged and deleted between listing and reading raises an IO error: the query is simply retried. Unreadable
    parts are quarantined (see the module doc), never fatal."""
    db = Path(db)
    for attempt in range(retries):
        files = [p for p, _ in readable_parts(db, table)]
        con = connect_read(db) if db.exists() else duckdb.connect()
        try:
            for name, f in (frames or {}).items():
                con.register(name, f)
            sources = []
            if db.exists():  # a DB from before a column existed reads it as NULL
                have, types = _existing_columns(con, table), dict(TABLES[table])
                sel = [c if c in have else f"NULL::{types[c].split()[0]} AS {c}" for c in cols]
                sources.append(f"SELECT {', '.join(sel)} FROM {table}")
            parts = _parts_relation(files, cols)
            if parts:
                sources.append(parts)
            if not sources:
                types = dict(TABLES[table])
                sources.append(f"SELECT {', '.join(f'NULL::{types[c].split()[0]} AS {c}' for c in cols)} WHERE false")
            con.execute(f"CREATE TEMP VIEW known AS {' UNION ALL '.join(sources)}")
            return con.execute(sql_over_known).df()
        except duckdb.Error as e:
            if attempt == retries - 1 or is_lock_error(e) or isinstance(e, duckdb.InterruptException):
                raise
            # a part deleted by a merge meanwhile (IO error): retry; a corrupt one: quarantined, then retry
            if not _quarantine_corrupt(db, table, files) and not isinstance(e, duckdb.IOException):
                raise
        finally:
            con.close()
    raise AssertionError("unreachable")


def run_rows(db: Path | str, run_id: str) -> int | None:
    """The rows the DB attributes to a bench run (`bench_runs.n_rows`: what its merges inserted), None if unknown."""
    if not Path(db).exists():
        return None
    con = connect_read(db)
    try:
        row = con.execute("SELECT n_rows FROM bench_runs WHERE run_id = ?", [run_id]).fetchone()
        return None if row is None or row[0] is None else int(row[0])
    finally:
        con.close()


def table_counts(db: Path | str) -> dict[str, int]:
    con = connect_read(db)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        con.close()
