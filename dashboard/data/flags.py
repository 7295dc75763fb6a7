"""Label flags: the user's own list of images whose labels look wrong (an eye close-up labelled age 1), kept in a
small DuckDB file of its own and never in the predictions database.

Where: $ZOO_FLAGS_DB, else `<bench db stem>.flags.duckdb` next to the bench DB (artifacts/bench.flags.duckdb). One
table, `label_flags(dataset, image_id, flagged_at, reason, note)`, keyed on (dataset, image_id): flagging an image
again updates its row (upsert), `unflag` deletes it. The bench DB is never opened here, and a file that holds any
other table than `label_flags` (a bench DB named by mistake) is refused before anything is written.

Every failure to write (a read-only folder, a file that is not ours, another process holding the file) raises
FlagStoreError with one line saying what to do; nothing is written half-way (one statement per transaction).
"""
from __future__ import annotations

import os
import random
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bench.store import USER_TABLES, user_ddl

TABLE = "label_flags"
COLUMNS = tuple(c for c, _ in USER_TABLES[TABLE])
DDL = user_ddl(TABLE)
# Why a label looks wrong; the page offers these, the store accepts any short text.
REASONS = ("wrong age", "wrong gender", "not a face / close-up", "several faces", "wrong race", "duplicate image",
           "other")
ENV = "ZOO_FLAGS_DB"
LOCK_WAIT_S = 2.0  # another dashboard process writing a flag holds the file for milliseconds
MAX_NOTE = 2000

_LOCK = threading.Lock()  # one connection at a time in this process: every session of the app shares the file


class FlagStoreError(RuntimeError):
    """The flag could not be saved or read; the message says why and what to do."""


def flags_path(bench_db: str | Path) -> Path:
    """The flags file: $ZOO_FLAGS_DB, else `<bench db stem>.flags.duckdb` in the bench DB's folder."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return Path(env).expanduser()
    bench_db = Path(bench_db)
    return bench_db.with_name(f"{bench_db.stem}.flags.duckdb")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _unwritable(path: Path, e: BaseException) -> FlagStoreError:
    return FlagStoreError(
        f"Cannot save label flags in {path.parent}: the folder or file is not writable ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else e}). Set {ENV} to a file in a folder you own "
        f"(e.g. {ENV}=~/agezoo-flags.duckdb) and restart the dashboard; the predictions are untouched.")


def _open(path: Path, read_only: bool):
    """duckdb.connect, retried briefly while another process holds the file."""
    import duckdb

    from bench.store import is_lock_error

    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as e:
            if is_lock_error(e) and time.monotonic() < deadline:
                time.sleep(0.02 + random.random() * 0.05)
                continue
            if is_lock_error(e):
                raise FlagStoreError(f"The label flags file {path} is busy (another dashboard is writing it); "
                                     "try again in a moment.") from None
            if read_only:
                raise FlagStoreError(f"Cannot read the label flags file {path}: {str(e).splitlines()[0]}") from None
            raise _unwritable(path, e) from None
        except OSError as e:
            raise _unwritable(path, e) from None


def _connect(path: Path, read_only: bool, bench_db: str | Path | None):
    """A connection to the flags file, after checking that it is not the bench DB and that an existing file holds
    nothing but label_flags (checked on a read-only connection, so a foreign DB is never opened for writing)."""
    if bench_db is not None and _same_file(path, Path(bench_db)):
        raise FlagStoreError(f"The label flags file {path} is the predictions database; label flags never go "
                             f"there. Set {ENV} to a file of its own (e.g. {Path(bench_db).stem}.flags.duckdb).")
    if not read_only and not path.parent.is_dir():
        raise _unwritable(path, NotADirectoryError(f"{path.parent} is not a folder"))
    if path.exists():
        con = _open(path, True)
        try:
            tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        finally:
            con.close()
        if tables - {TABLE}:
            raise FlagStoreError(f"{path} is not a label flags file (it holds the tables "
                                 f"{', '.join(sorted(tables))}); set {ENV} to a file of its own.")
    return _open(path, read_only)


def _write(path: Path, bench_db: str | Path | None, sql: str, params: list) -> int:
    import duckdb

    with _LOCK:
        con = _connect(path, False, bench_db)
        try:
            con.execute(DDL)
            n = con.execute(sql, params).fetchall()
            return len(n)
        except duckdb.Error as e:  # a read-only file opened fine but its write failed
            raise _unwritable(path, e) from None
        finally:
            con.close()


def _clean(text: str | None, what: str, limit: int) -> str:
    text = " ".join(str(text or "").split())
    if len(text) > limit:
        raise FlagStoreError(f"The {what} is {len(text)} characters long; keep it under {limit}.")
    return text


def flag(path: str | Path, dataset: str, image_id: str, reason: str, note: str = "",
         bench_db: str | Path | None = None, now: datetime | None = None) -> None:
    """Flag one image's label (dataset, image_id): a new row, or the existing one updated (upsert, never a second
    row). `bench_db`, when given, is refused as the target."""
    if not dataset or not image_id:
        raise FlagStoreError("A flag needs the image's dataset and image id.")
    reason = _clean(reason, "reason", 200)
    if not reason:
        raise FlagStoreError("Say why the label looks wrong (a reason).")
    note = _clean(note, "note", MAX_NOTE)
    at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    _write(Path(path), bench_db,
           f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?) ON CONFLICT (dataset, image_id) DO UPDATE SET "
           "flagged_at = excluded.flagged_at, reason = excluded.reason, note = excluded.note RETURNING 1",
           [str(dataset), str(image_id), at, reason, note])


def unflag(path: str | Path, dataset: str, image_id: str, bench_db: str | Path | None = None) -> bool:
    """Remove an image's flag; False when it was not flagged (no file is created for that)."""
    path = Path(path)
    if not path.exists():
        return False
    return _write(path, bench_db, f"DELETE FROM {TABLE} WHERE dataset = ? AND image_id = ? RETURNING 1",
                  [str(dataset), str(image_id)]) > 0


def read_flags(path: str | Path, bench_db: str | Path | None = None) -> pd.DataFrame:
    """Every flag, newest first (an empty frame with COLUMNS when there is no flags file yet)."""
    path = Path(path)
    empty = pd.DataFrame({c: pd.Series(dtype="datetime64[ns]" if c == "flagged_at" else object) for c in COLUMNS})
    if not path.exists():
        return empty
    with _LOCK:
        con = _connect(path, True, bench_db)
        try:
            if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                               [TABLE]).fetchone()[0]:
                return empty
            return con.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} "
                               "ORDER BY flagged_at DESC, dataset, image_id").df()
        finally:
            con.close()


def flag_of(flags: pd.DataFrame, dataset: str, image_id: str) -> dict | None:
    """The flag row of one image in a `read_flags` frame, or None."""
    hit = flags[(flags["dataset"] == dataset) & (flags["image_id"] == image_id)]
    return hit.iloc[0].to_dict() if len(hit) else None


def to_csv(flags: pd.DataFrame) -> bytes:
    """The flags (plus any extra label columns the page joined on) as CSV, times in ISO 8601 UTC."""
    out = flags.copy()
    if "flagged_at" in out:
        out["flagged_at"] = pd.to_datetime(out["flagged_at"]).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out.to_csv(index=False).encode()
