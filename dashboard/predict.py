"""Run the registry's models on one face crop (the Compare page). Streamlit-free so the benchmark can time it."""
from __future__ import annotations

import atexit
import gc
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # pandas is imported on use: the model process and `python -m dashboard` start without it
    from concurrent.futures import Future

    import pandas as pd


def set_torch_threads() -> None:
    """One intra-op thread by default: on the 2-core machines this project targets, a dashboard sharing the CPU with
    a training or bench process is ~40x slower with 2 spinning OpenMP threads than with 1 (measured: resnet18 at
    64 px, 660 ms vs 17 ms per image). DASHBOARD_TORCH_THREADS overrides."""
    import torch

    n = int(os.environ.get("DASHBOARD_TORCH_THREADS", "1") or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(max(1, n))


def available_models(root: Path | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """(runnable models as plain dicts: run.json's content, or a peer's {id, name, kind}; [(id, why not runnable)]):
    a run is runnable when its weights (or, for an ensemble, every member's, for an adapted run its own and its
    parent's) are present; external peers are always listed."""
    from zoo.paths import runs_dir
    from zoo.registry import missing_weights
    from zoo.runs import RunRecord

    root = root or runs_dir()
    runs = RunRecord.load_all(root)
    by_id = {r.id: r for r in runs}
    ok, skipped = [], []
    for r in runs:
        why = missing_weights(r, by_id, root)
        (skipped.append((r.id, why)) if why else ok.append(r.to_dict()))  # plain dicts, as the peers' below
    from zoo.peers import list_peers

    # External peers carry their own weights (inside their package); one that fails to load shows its error.
    ok += [{"id": p, "name": p, "kind": "peer"} for p in list_peers()]
    return ok, skipped


def runtime() -> str:
    """The runtime of the zoo networks (zoo.export.RUNTIMES): `onnx-cached` unless DASHBOARD_RUNTIME names another.

    `onnx-cached` runs each network already exported into the cache's exported/ in ONNX Runtime, with its backbone
    never built in torch, so the model process imports neither timm nor torchvision and builds no backbone: the six
    headline networks load in 4.5 s instead of 9.9 s (import and load, measured on the busy 2-core CPU). A network
    not exported yet runs eager, as before; `python -m dashboard` exports those in the background once its models
    have loaded (`ModelPool.unexported`), so only a fresh clone's first start pays. Not `auto`: that would export
    every network on its first load (~1 s each), which a fresh clone's first photo would wait for. Outputs match
    eager to ~1e-5 (tests/zoo/test_export.py)."""
    return os.environ.get("DASHBOARD_RUNTIME", "onnx-cached") or "onnx-cached"


def _mae(rec: dict) -> float:
    """A run's registered val MAE (model selection uses val, as `zoo select best`), else its test MAE, else inf."""
    metrics = rec.get("metrics") or {}
    for split in ("val", "test"):
        v = (metrics.get(split) or {}).get("mae")
        if v is not None and not np.isnan(v):
            return float(v)
    return float("inf")


def best_model(runs: list[dict], ids: list[str] | None = None) -> str | None:
    """The id with the lowest registered MAE (`_mae`) among `runs` (restricted to `ids`); None if none has one.
    Peers have no registered MAE, so a zoo model is preferred."""
    pick = [r for r in runs if ids is None or r["id"] in ids]
    scored = [(_mae(r), k, r["id"]) for k, r in enumerate(pick) if _mae(r) < float("inf")]
    return min(scored)[2] if scored else None


def headline_ids(runs: list[dict], n_singles: int = 5) -> list[str]:
    """The photo page's default models (`available_models` dicts): the best runnable ensemble and its members (the
    project's headline networks), so the consensus is over independently trained networks and the ensemble is the
    best answer; a zoo without a runnable ensemble: its `n_singles` networks with the lowest registered MAE; no zoo
    model at all: every runnable model (the peers)."""
    zoo = [r for r in runs if r.get("kind") != "peer"]
    ids = {r["id"] for r in zoo}
    ensembles = [r for r in zoo if r.get("kind") == "ensemble" and set(r.get("members") or []) <= ids]
    if ensembles:
        best = best_model(ensembles) or ensembles[0]["id"]
        members = next(r for r in ensembles if r["id"] == best).get("members") or []
        return [best, *dict.fromkeys(members)]
    nets = sorted(enumerate(zoo), key=lambda kr: (_mae(kr[1]), kr[0]))
    return [r["id"] for _, r in nets[:n_singles]] or [r["id"] for r in runs]


def load_predictor(model_id: str, root: Path | None = None):
    from zoo.peers import is_peer, load_peer
    from zoo.registry import load

    set_torch_threads()  # before loading: an ONNX Runtime session takes torch's thread count
    return load_peer(model_id) if is_peer(model_id) else load(model_id, root, runtime=runtime())


class ModelPool:
    """Loaded predictors, filled in the background (the app's runs in the model process: `PoolProcess`).

    Loading the shipped zoo takes seconds (importing torch and timm, building each network), far more than
    predicting one photo with all of it; so `preload` starts a daemon thread and the first photo finds the models
    ready. `get` never loads a model twice:
    a page asking for one that the thread is still loading waits for it. Ensembles are built from the pool's own
    members instead of loading each member again."""

    def __init__(self, root: Path | None = None):
        self.root = root
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._loaded: dict[str, object] = {}
        self._thread: threading.Thread | None = None
        self._plan: list[str] = []  # what the preload thread loads, in order (for `progress`)
        self._done = 0
        self._current = ""
        self._started = self._finished = None

    def get(self, model_id: str):
        with self._guard:
            lock = self._locks.setdefault(model_id, threading.Lock())
        with lock:
            if model_id not in self._loaded:
                self._loaded[model_id] = self._load(model_id)
            return self._loaded[model_id]

    def _load(self, model_id: str):
        from zoo.peers import is_peer
        from zoo.inference import EnsemblePredictor
        from zoo.registry import get_run

        if not is_peer(model_id):
            run = get_run(model_id, self.root)
            if run.kind == "ensemble":
                return EnsemblePredictor([self.get(m) for m in run.members], model_id, run.to_dict())
        return load_predictor(model_id, self.root)

    def loaded(self) -> int:
        return len(self._loaded)

    def unexported(self) -> list[str]:
        """Loaded networks running eager whose ONNX export is not in the cache: exporting them lets the next start
        load them without their torch backbones (runtime `onnx-cached`)."""
        from zoo.export import cached_onnx_path
        from zoo.inference import NetworkPredictor

        return [mid for mid, p in list(self._loaded.items()) if isinstance(p, NetworkPredictor)
                and p.runtime == "eager" and not cached_onnx_path(p.info, self.root).exists()]

    def preload(self, model_ids: list[str], detector: bool = True) -> threading.Thread:
        """Load `model_ids` in a daemon thread (once per pool) and run each once on a blank crop, so the first real
        photo does not pay for the first forward either; failures are left for `get` to raise on the page. With
        `detector`, the face detector is loaded first, on the thread `detect_faces` runs on. `progress` follows it."""
        def work() -> None:
            blank = np.full((64, 64, 3), 128, np.uint8)
            try:
                if detector:
                    self._current = FACE_DETECTOR
                    load_detector().result()
                    self._done = 1
                for mid in model_ids:
                    self._current = mid
                    try:
                        model = self.get(mid)
                        if not hasattr(model, "members"):  # an ensemble's forward is its members' (warm already)
                            predict_one(model, blank, mc_dropout=2)
                    except Exception:  # noqa: BLE001 (the Compare page shows this model's error when it runs it)
                        pass
                    self._done += 1
                # Streamlit runs gc.collect(2) after every script run (runner.postScriptGC): with torch, timm and the
                # networks loaded that walks ~500k objects, 0.3 s a run and two runs a new photo. Freezing what is
                # loaded now (modules, networks: alive for the app's life) leaves the collector the page's garbage.
                gc.freeze()
                atexit.register(gc.unfreeze)  # collectable again at exit (else duckdb's bindings report leaks)
            finally:
                self._current, self._finished = "", time.perf_counter()

        with self._guard:
            if self._thread is None:
                self._plan, self._started = [FACE_DETECTOR] * detector + list(model_ids), time.perf_counter()
                self._thread = threading.Thread(target=work, name="model-preload", daemon=True)
                self._thread.start()
        return self._thread

    def preload_headline(self) -> threading.Thread:
        """`preload` the photo page's default models (`headline_ids`), without the face detector: the app's model
        process does this, and the app detects faces itself (`detect_faces`; the photo page starts loading the
        detector there), so the two load at once on the two cores."""
        return self.preload(headline_ids(available_models(self.root)[0]), detector=False)

    def predict(self, model_id: str, crop: np.ndarray, mc_dropout: int = 10, tta: str | None = None) -> dict:
        """`predict_one` with this pool's model."""
        return predict_one(self.get(model_id), crop, mc_dropout=mc_dropout, tta=tta)

    def combine(self, model_id: str, results: dict[str, dict]) -> dict | None:
        """`combine_members` for this pool's ensemble `model_id`."""
        return combine_members(self.get(model_id), results)

    def progress(self) -> PoolProgress:
        """Where the preload stands: steps done of planned (the face detector, then each model), the step under way,
        and seconds since it started (until it finished)."""
        end = self._finished or time.perf_counter()
        return PoolProgress(self._done, len(self._plan), self._current, self._finished is not None,
                            end - self._started if self._started else 0.0,
                            [m for m in self._plan if m != FACE_DETECTOR])


FACE_DETECTOR = "face detector"


class PoolStopped(RuntimeError):
    """The model process ended (killed, out of memory): the app starts a new one on the next page run."""


class PoolProcess:
    """The app's `ModelPool` in a process of its own, with the same calls (preload, progress, predict, combine) and
    `wait`, each a message on a pipe. Why a process: loading the pool is ~6 s of Python (importing torch, torchvision
    and timm, building networks) that, in a thread of the app, holds the interpreter lock against every page being
    drawn (a new tab took 4 s instead of ~2.5 s while it loaded, and the loading itself ran twice as long). In its own
    process it runs on the other core, and the app never imports torch. Faces are detected in the app (dlib, no
    torch). Calls are served one at a time; the page caches answers (`st.cache_data`), so they are few."""

    def __init__(self, root: Path | None = None):
        import subprocess
        import sys
        from multiprocessing import Pipe

        # A plain subprocess on one end of a socket pair, not multiprocessing's spawn: spawn re-runs the parent's
        # __main__ in the child, and while a page runs Streamlit's __main__ is that page's script.
        self._conn, theirs = Pipe()
        repo = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from dashboard.predict import _serve_pool; _serve_pool()", str(theirs.fileno()),
             str(root or "")], pass_fds=[theirs.fileno()], env=env, cwd=repo)
        theirs.close()
        self._lock = threading.Lock()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self) -> None:
        self._conn.close()  # the process ends when its end of the pipe closes
        try:
            self._proc.wait(5)
        except Exception:  # noqa: BLE001 (subprocess.TimeoutExpired)
            self._proc.kill()

    def _call(self, name: str, *args):
        with self._lock:
            try:
                self._conn.send((name, args))
                ok, value = self._conn.recv()
            except (EOFError, OSError) as e:
                raise PoolStopped(f"the model process stopped (exit code {self._proc.poll()}); reload the page "
                                  "to start it again") from e
        if ok:
            return value
        raise value

    def preload(self, model_ids: list[str]) -> None:
        self._call("preload", list(model_ids))

    def preload_headline(self) -> None:
        self._call("preload_headline")

    def progress(self) -> PoolProgress:
        return self._call("progress")

    def unexported(self) -> list[str]:
        return self._call("unexported")

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (p := self.progress()).finished and p.total:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return p.finished

    def predict(self, model_id: str, crop: np.ndarray, mc_dropout: int = 10, tta: str | None = None) -> dict:
        return self._call("predict", model_id, crop, mc_dropout, tta)

    def combine(self, model_id: str, results: dict[str, dict]) -> dict | None:
        return self._call("combine", model_id, results)


def _serve_pool() -> None:
    """The model process (argv: the pipe's file descriptor, the registry root or ""): a ModelPool answering
    PoolProcess's calls until the app closes the pipe or exits."""
    import sys
    from multiprocessing.connection import Connection

    conn, root = Connection(int(sys.argv[1])), sys.argv[2]
    pool = ModelPool(Path(root) if root else None)
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            value = getattr(pool, name)(*args)
            reply = (True, None if name.startswith("preload") else value)  # the preload's thread stays here
        except Exception as e:  # noqa: BLE001 (the page shows it: a broken checkpoint, a bad image)
            reply = (False, e)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as e:  # noqa: BLE001 (an exception that does not pickle)
            conn.send((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}; {e}")))


_POOLS: dict[str, PoolProcess] = {}  # registry version -> the app's pool (two kept: the current and the one before)
_POOLS_GUARD = threading.Lock()


def app_pool(reg_ver: str) -> PoolProcess:
    """The app's model pool (a `PoolProcess`) for this registry version (zoo.runs.registry_version), preloading
    the photo page's default models (`headline_ids`) from its first call: `python -m dashboard` makes that call before
    it starts the server, so the models load while the browser connects; under `streamlit run`, app.py's first run
    does. The rest of the zoo loads when a page asks for it. A pool whose process died is replaced."""
    with _POOLS_GUARD:
        pool = _POOLS.get(reg_ver)
        if pool is not None and pool.alive():
            return pool
        pool = _POOLS[reg_ver] = PoolProcess()
        for old in list(_POOLS)[:-2]:
            _POOLS.pop(old).close()
    pool.preload_headline()  # the process reads the registry itself: nothing here waits for it
    return pool


class PoolProgress(NamedTuple):
    done: int
    total: int
    current: str  # a model id, FACE_DETECTOR, or "" when idle
    finished: bool
    seconds: float
    models: list  # the model ids the preload loads


_DETECTOR = None
_DETECT_GUARD = threading.Lock()


def _on_detector_thread(fn) -> Future:
    """fn(FacePipeline()) on one long-lived worker thread. zoo.faces keeps its dlib detector and landmark model per
    thread, and Streamlit runs every rerun of a page on a new thread, so detecting on the page's own thread paid ~1 s
    of dlib loading for every new photo (measured: 1.3-1.5 s first, 0.25 s again on the astronaut); one worker
    thread also never runs two dlib detections at once."""
    global _DETECTOR
    from concurrent.futures import ThreadPoolExecutor

    from zoo.faces import FacePipeline

    with _DETECT_GUARD:
        if _DETECTOR is None:
            _DETECTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="face-detector")
    return _DETECTOR.submit(lambda: fn(FacePipeline()))


def load_detector() -> Future:
    """Start loading the face detector and landmark model on the detector thread (~1 s); returns at once."""
    return _on_detector_thread(lambda pipe: pipe.load())


def detect_faces(rgb: np.ndarray) -> list:
    """`zoo.faces.FacePipeline().detect(rgb)` on the detector thread."""
    return _on_detector_thread(lambda pipe: pipe.detect(rgb)).result()


def predict_one(predictor, crop: np.ndarray, mc_dropout: int = 10, tta: str | None = None) -> dict:
    """One model on one canonical crop -> {age, sigma_*, gender_prob, `attr:NAME` for each attribute head, seconds},
    resized to the model's input as the bench and `zoo predict` do (`zoo.pipeline.predict_crops`)."""
    from zoo.pipeline import predict_crops

    set_torch_threads()
    t0 = time.perf_counter()
    out = predict_crops(predictor, crop[None], mc_dropout=int(mc_dropout), tta=tta)
    res = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in out.items()}
    res["seconds"] = time.perf_counter() - t0
    return res


class _Known:
    """An ensemble member whose outputs on the crop are known already (a `predict_one` result): the ensemble combines
    them (zoo.inference.EnsemblePredictor, its one combination rule) without running the network again."""

    def __init__(self, member, result: dict):
        from zoo.attributes import predictor_attributes, predictor_targets

        self.img_size = member.img_size
        self.attributes, self.targets = predictor_attributes(member), predictor_targets(member)
        self.out = {k: np.array([v], np.float64) for k, v in result.items() if k != "seconds"}

    def predict_modes(self, images, modes, mc_dropout: int = 0, batch_size: int = 256) -> dict:
        return {mode: self.out for mode in modes}


def combine_members(ensemble, results: dict[str, dict]) -> dict | None:
    """An ensemble's `predict_one` result built from its members' results on the same crop (the same MC-Dropout
    passes and TTA; `results`: member id -> result), or None when a member's is missing. The page runs the headline
    ensemble and its six networks: combining halves that work (each network runs once) and makes the ensemble row
    the exact combination of the member rows shown beside it. `seconds`: its members' total."""
    from zoo.inference import EnsemblePredictor

    ids = list((getattr(ensemble, "info", None) or {}).get("members") or [])
    if not ids or len(ids) != len(ensemble.members) or any(m not in results for m in ids):
        return None
    known = [_Known(m, results[i]) for m, i in zip(ensemble.members, ids)]
    out = EnsemblePredictor(known, ensemble.id, ensemble.info).predict(np.zeros((1, 1, 1, 3), np.uint8))
    res = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in out.items()}
    res["seconds"] = float(sum(results[i].get("seconds", 0.0) for i in ids))
    return res


def attribute_table(rows: list[dict]) -> pd.DataFrame:
    """The attribute heads' probabilities in `predict_one` rows (keys `attr:NAME`): one row per model that has any
    (label, then one column per attribute, NaN where a model lacks that head); empty when no model has one."""
    import pandas as pd

    from zoo.attributes import ATTR_PREFIX

    names = list(dict.fromkeys(k[len(ATTR_PREFIX):] for r in rows for k in r if k.startswith(ATTR_PREFIX)))
    keep = [r for r in rows if any(f"{ATTR_PREFIX}{n}" in r for n in names)]
    return pd.DataFrame({"model": [r.get("label") or r.get("model_id") for r in keep],
                         **{n: [r.get(f"{ATTR_PREFIX}{n}", np.nan) for r in keep] for n in names}})


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows of {model_id, label, kind, age, sigma_aleatoric, sigma_epistemic, sigma_tta, gender_prob, seconds,
    error} -> frame with sigma_total = sqrt(aleatoric² + epistemic²) (whichever exist)."""
    import pandas as pd

    cols = ["model_id", "label", "kind", "age", "sigma_aleatoric", "sigma_epistemic", "sigma_tta", "gender_prob",
            "seconds", "error"]
    df = pd.DataFrame(rows).reindex(columns=cols)
    for c in ("age", "sigma_aleatoric", "sigma_epistemic", "sigma_tta", "gender_prob", "seconds"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    from zoo.metrics import total_sigma

    df["sigma_total"] = total_sigma(df["sigma_aleatoric"], df["sigma_epistemic"])
    return df


def mark_consensus(res: pd.DataFrame, headline: list[str], true_age: float | None = None) -> pd.DataFrame:
    """`results_frame` rows plus `in_consensus` (the rows the summary card averages: the headline networks that
    answered; ensembles are left out, as they average those same networks and would count them twice; without a
    headline network shown, every network shown, then every row) and, with a true age, `age_error` (predicted −
    true, years)."""
    res = res.copy()
    ok, net = res["error"].isna(), res["kind"] != "ensemble"
    res["in_consensus"] = False
    for pick in (ok & net & res["model_id"].isin(headline), ok & net, ok):
        if pick.any():
            res["in_consensus"] = pick
            break
    if true_age is not None:
        res["age_error"] = res["age"] - float(true_age)
    return res


def summary(res: pd.DataFrame, best: str | None = None, true_age: float | None = None) -> dict:
    """The summary card of a `mark_consensus` frame: consensus age (mean over the `in_consensus` rows) ± spread (their
    standard deviation across models, NaN for one), gender from their mean P(female) with its confidence
    max(p, 1 − p) and how many of them fall on the same side of 0.5, and the `best` model's answer. With a true age:
    the consensus error (consensus − true), the best model's error and the consensus rows' mean absolute error."""
    c = res[res["in_consensus"]]
    ages, probs = c["age"].dropna(), c["gender_prob"].dropna()
    p = float(probs.mean()) if len(probs) else float("nan")
    female = p >= 0.5
    out = {"n": len(c), "n_age": len(ages), "age": float(ages.mean()) if len(ages) else float("nan"),
           "age_sd": float(ages.std()) if len(ages) > 1 else float("nan"),
           "n_gender": len(probs), "p_female": p, "gender": ("female" if female else "male") if len(probs) else "",
           "confidence": max(p, 1 - p) if len(probs) else float("nan"),
           "agree": int(((probs >= 0.5) == female).sum()), "best": None}
    row = res[(res["model_id"] == best) & res["error"].isna()] if best else res.iloc[:0]
    if len(row):
        r = row.iloc[0]
        out["best"] = {"model_id": best, "label": r["label"], "age": float(r["age"]),
                       "sigma": float(r["sigma_total"]), "p_female": float(r["gender_prob"])}
    if true_age is not None:
        out["true_age"] = float(true_age)
        out["error"] = out["age"] - float(true_age)
        out["mae"] = float((ages - float(true_age)).abs().mean()) if len(ages) else float("nan")
        if out["best"]:
            out["best"]["error"] = out["best"]["age"] - float(true_age)
    return out
