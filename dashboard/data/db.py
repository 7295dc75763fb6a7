"""Connections, locks and result caching for every read of the predictions database (bench/SCHEMA.md).

Rules that keep the app responsive while a bench run writes:
* connections are read-only and short-lived: one per query, or one per Streamlit script run inside `batch()`
  (opened at the first cache miss, closed when the run ends), so a bench merge gets the file within a second or two;
* a locked file is retried (`bench.store.connect_read`, the bench's own lock handling: `bench.store.is_lock_error`)
  and, if still locked, the last good result of the same query is served (`stale()` then says so) instead of
  failing the page;
* results are cached with `st.cache_data`, keyed on the database's (mtime, size) "version", so a finished bench
  merge invalidates the cache by itself.

Every query (dashboard.data.queries) has the signature `fn(db: str, ver: str, ...)` and is wrapped by `@query`
(cached). `fn.raw` is the uncached function (for `benchmarks/dashboard_queries.py`).
"""
from __future__ import annotations

import functools
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from bench import store

try:
    import streamlit as st
except ImportError:  # pragma: no cover - the benchmark can run without streamlit installed
    st = None


class DBBusy(RuntimeError):
    """The database is locked by a writer (a bench run) and no earlier result of this query is cached."""


class DBUnavailable(RuntimeError):
    """The database is missing, empty or does not follow the schema; the message says what to do."""


# ------------------------------------------------------------------------------------------------ location, access
def db_path() -> Path:
    """The predictions DB: $ZOO_BENCH_DB, else <artifacts>/bench.duckdb."""
    env = os.environ.get("ZOO_BENCH_DB")
    if env:
        return Path(env)
    from zoo.paths import artifacts_dir

    return artifacts_dir() / "bench.duckdb"


def db_version(path: str | Path) -> str:
    """A token that changes whenever the DB (or its write-ahead log) changes; "" when the file is missing."""
    path = Path(path)
    parts = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            s = p.stat()
            parts.append(f"{s.st_mtime_ns}:{s.st_size}")
        except OSError:
            parts.append("-")
    return "" if parts[0] == "-" else "|".join(parts)


_BUSY_UNTIL: dict[str, float] = {}  # db path -> monotonic time before which we do not even try (a writer holds it)


def _lock_timeout() -> float:
    try:
        return float(os.environ.get("DASHBOARD_DB_LOCK_TIMEOUT", "2.0"))
    except ValueError:
        return 2.0


def _open_read(path: str):
    """Read-only connection through bench.store.connect_read, which retries while a writer holds the lock.

    A bench merge holds the file well under a second, so DASHBOARD_DB_LOCK_TIMEOUT (default 2 s) of retries is
    plenty; after that the query raises DBBusy (the caller serves the last good result) and, for the next few
    seconds, other queries fail fast instead of each waiting again."""
    import duckdb

    timeout = _lock_timeout()
    if time.monotonic() < _BUSY_UNTIL.get(path, 0.0):
        raise DBBusy(f"{path} is locked by a writer (a bench run?)")
    try:
        return store.connect_read(path, timeout=timeout)
    except duckdb.Error as e:
        if store.is_lock_error(e):
            _BUSY_UNTIL[path] = time.monotonic() + max(1.0, 1.5 * timeout)
            raise DBBusy(f"{path} is locked by a writer (a bench run?): {e}") from None
        raise


def pending_rows(db: str) -> int:
    """Prediction rows a bench run has published as Parquet parts but not merged into the DB yet (0 when the parts
    folder cannot be read: the count is informational)."""
    try:
        return int(store.pending_rows(db, "predictions"))
    except Exception:
        return 0


_LOCAL = threading.local()


@contextmanager
def batch():
    """Within one script run (app.py wraps each page in it): queries share one read-only connection per DB, opened
    at the first cache miss and closed when the run ends — so a page with five uncached queries pays one connect,
    and the file is still free again within the run's second or two."""
    prev = getattr(_LOCAL, "cons", None)
    _LOCAL.cons = {}
    try:
        yield
    finally:
        for con in _LOCAL.cons.values():
            try:
                con.close()
            except Exception:
                pass
        _LOCAL.cons = prev


def release() -> None:
    """Close this run's shared connections now (before slow non-DB work, e.g. running models on a photo)."""
    cons = getattr(_LOCAL, "cons", None)
    if cons:
        for con in cons.values():
            try:
                con.close()
            except Exception:
                pass
        cons.clear()


def _configure(con) -> None:
    try:
        con.execute("SET threads = 2")
    except Exception:
        pass


@contextmanager
def connect(db: str):
    """A short-lived read-only connection (shared for the current script run inside `batch()`)."""
    db = str(db)
    if not Path(db).is_file():
        raise DBUnavailable(f"no predictions database at {db}")
    shared = getattr(_LOCAL, "cons", None)
    if shared is not None:
        con = shared.get(db)
        if con is None:
            con = shared[db] = _open_read(db)
            _configure(con)
        yield con
        return
    con = _open_read(db)
    try:
        _configure(con)
        yield con
    finally:
        con.close()


def sql(db: str, q: str, params: list | dict | None = None) -> pd.DataFrame:
    with connect(db) as con:
        return con.execute(q, params or []).df()


# ------------------------------------------------------------------------------------------------------- caching
_LAST: "OrderedDict[tuple, object]" = OrderedDict()
_LAST_LOCK = threading.Lock()
_STALE = threading.local()


def stale() -> list[str]:
    """Queries of the current run that were served from the last good result because the DB was locked."""
    return list(getattr(_STALE, "names", []))


def reset_stale() -> None:
    _STALE.names = []


def query(fn):
    """Cache a query on (db, ver, args); fall back to the last good result while a writer holds the DB."""
    cached = st.cache_data(show_spinner=False, max_entries=512)(fn) if st is not None else fn

    @functools.wraps(fn)
    def call(db, ver, *args, **kw):
        key = (fn.__name__, str(db), args, tuple(sorted(kw.items())))
        try:
            out = cached(str(db), ver, *args, **kw)
        except DBBusy:
            with _LAST_LOCK:
                if key in _LAST:
                    names = getattr(_STALE, "names", [])
                    names.append(fn.__name__)
                    _STALE.names = names
                    return _LAST[key]
            raise
        with _LAST_LOCK:
            _LAST[key] = out
            _LAST.move_to_end(key)
            while len(_LAST) > 256:
                _LAST.popitem(last=False)
        return out

    call.raw = fn
    call.clear = getattr(cached, "clear", lambda: None)
    return call
