"""Manifest, splits, image cache and `python -m zoo data scan` on small fixture data; one real-data test."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import make_jpeg

UTK_DATE = "20170116{:09d}"


def _frame(n: int, seed: int = 0, subjects: bool = False) -> pd.DataFrame:
    """n manifest-like rows (no images): ages 1..90, both genders, a content hash per row; with `subjects`, rows
    belong to subjects of 1-5 images whose ages spread a few years (FG-NET-like), and some rows are byte-identical
    copies (shared content hash, no subject)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(1, 91, n).astype(float)
    gender = pd.array(rng.integers(0, 2, n), dtype="Int8")
    content = [hashlib.sha1(f"{seed}:{i}".encode()).hexdigest() for i in range(n)]
    subject = [None] * n
    if subjects:
        i, s = 0, 0
        while i < n - 20:
            k = int(rng.integers(1, 6))
            base = rng.integers(1, 80)
            for j in range(i, min(i + k, n - 20)):
                subject[j] = f"subj:{s:03d}"
                age[j] = base + rng.integers(0, 6)
                gender[j] = s % 2
            i, s = i + k, s + 1
        for j in range(n - 20, n, 2):  # the last 20 rows: 10 pairs of byte-identical copies
            content[j + 1] = content[j]
    return pd.DataFrame({"image_id": [c[:16] for c in content], "age": age, "gender": gender,
                         "subject_id": subject, "content_hash": content})


def _strata(frame: pd.DataFrame) -> pd.Series:
    from zoo.data.splits import _AGE_EDGES

    return pd.Series(np.digitize(frame["age"], _AGE_EDGES), index=frame.index).astype(str) + "/" + \
        frame["gender"].astype(int).astype(str)


# ---- splits ----------------------------------------------------------------------------------------------------

def test_split_fractions_and_strata():
    from zoo.data.splits import compute_splits

    f = _frame(600)
    split = compute_splits(f)
    assert set(split) == {"train", "val", "test"}
    frac = split.value_counts(normalize=True)
    assert abs(frac["train"] - 0.6) < 0.04 and abs(frac["val"] - 0.2) < 0.04 and abs(frac["test"] - 0.2) < 0.04
    strata = _strata(f)
    for name, idx in strata.groupby(strata).groups.items():
        if len(idx) >= 10:  # every group here is one image
            s = split.loc[idx]
            assert set(s) == {"train", "val", "test"}, name
            assert 0.45 <= (s == "train").mean() <= 0.75, name


def test_split_is_deterministic_and_seeded():
    from zoo.data.splits import compute_splits

    f = _frame(400, subjects=True)
    a = compute_splits(f, seed=0)
    shuffled = compute_splits(f.sample(frac=1.0, random_state=7), seed=0)
    assert a.equals(shuffled.sort_index())
    assert a.equals(compute_splits(f.reset_index(drop=True), seed=0))
    b = compute_splits(f, seed=1)
    assert (a != b).mean() > 0.2  # another seed is another split…
    assert abs((b == "train").mean() - 0.6) < 0.08  # …with the same fractions


def test_split_is_subject_and_duplicate_exclusive():
    from zoo.data.splits import compute_splits

    f = _frame(500, subjects=True)
    f["split"] = compute_splits(f)
    assert f["split"].notna().all()
    assert f.groupby("subject_id")["split"].nunique().max() == 1  # no subject in two splits
    assert f.groupby("content_hash")["split"].nunique().max() == 1  # byte-identical copies together
    assert f["subject_id"].nunique() > 100
    frac = f["split"].value_counts(normalize=True)
    assert abs(frac["train"] - 0.6) < 0.08 and abs(frac["test"] - 0.2) < 0.08


def test_unknown_gender_rows_get_a_split():
    """FG-NET has no gender labels at all; those rows must still be split (they form their own strata)."""
    from zoo.data.splits import compute_splits

    f = _frame(200)
    f["gender"] = pd.array([None] * len(f), dtype="Int8")
    split = compute_splits(f)
    assert split.notna().all() and set(split) == {"train", "val", "test"}


def test_official_split_and_split_file_take_precedence(tmp_path):
    from zoo.data.splits import assign_splits, compute_splits, write_split_file

    f = _frame(300)
    official = np.array([None] * len(f), dtype=object)
    official[:30], official[30:60], official[60:90] = "train", "valid", "TEST"
    f["official_split"] = official
    # A committed split file lists rows 60..149 as 'test' (the official split still wins for 60..89).
    listed = f.iloc[60:150].assign(split="test")
    split_file = write_split_file(listed, tmp_path / "s.tsv", header="test")
    split = assign_splits(f, seed=0, split_file=split_file)
    assert (split[:30] == "train").all() and (split[30:60] == "val").all() and (split[60:150] == "test").all()
    rest = compute_splits(f.iloc[150:], seed=0)
    assert split[150:].equals(rest.astype(str))
    assert set(split) <= {"train", "val", "test"}


# ---- manifest / scan -------------------------------------------------------------------------------------------

def _utk_tree(root: Path, n: int = 24) -> list[str]:
    names = [f"{(7 * i) % 80 + 1}_{i % 2}_{i % 5}_{UTK_DATE.format(i)}.jpg.chip.jpg" for i in range(n)]
    for name in names:
        make_jpeg(root / name, size=(24, 24))
    return names


def test_scan_twice_gives_identical_split_file_and_manifest(tmp_env, tmp_path):
    from zoo.data.manifest import Manifest, manifest_path, scan
    from zoo.data.splits import split_file_path

    root = tmp_path / "utk"
    _utk_tree(root)
    m1 = scan("utkface", root, progress=False)
    split_file = split_file_path("utkface")
    assert split_file.is_relative_to(tmp_env.artifacts) and manifest_path("utkface").is_relative_to(tmp_env.cache)
    first = split_file.read_bytes()
    os.remove(split_file)  # computed from scratch again, not read back
    m2 = scan("utkface", root, progress=False)
    assert split_file.read_bytes() == first
    m3 = scan("utkface", root, progress=False)  # and with the file present
    assert split_file.read_bytes() == first
    assert m1.hash == m2.hash == m3.hash
    loaded = Manifest.load(manifest_path("utkface"))
    assert loaded.hash == m1.hash and loaded.root == root.resolve() and len(loaded.frame) == 24
    assert str(root) not in first.decode()  # the committed file has no machine paths


def test_committed_split_file_is_honoured(tmp_env, tmp_path):
    from zoo.data.manifest import scan
    from zoo.data.splits import read_split_file, split_file_path

    root = tmp_path / "utk"
    _utk_tree(root)
    computed = scan("utkface", root, progress=False).frame.set_index("image_id")["split"]
    # Someone commits a different assignment; a new image appears that the file does not list.
    rotate = {"train": "val", "val": "test", "test": "train"}
    split_file = split_file_path("utkface")
    lines = split_file.read_text().splitlines()
    edited = lines[:2] + [f"{i}\t{rotate[s]}" for i, s in (ln.split("\t") for ln in lines[2:])]
    split_file.write_text("\n".join(edited) + "\n")
    new_name = f"33_0_1_{UTK_DATE.format(999)}.jpg.chip.jpg"
    make_jpeg(root / new_name, size=(24, 24))
    m = scan("utkface", root, progress=False)
    got = m.frame.set_index("image_id")["split"]
    assert len(got) == len(computed) + 1
    for image_id, s in computed.items():
        assert got[image_id] == rotate[s]
    new_id = m.frame.loc[m.frame["path"] == new_name, "image_id"].item()
    assert got[new_id] in ("train", "val", "test")
    assert read_split_file(split_file) == got.to_dict()  # rewritten, now listing the new image too


def test_empty_or_unusable_dataset_scans_to_an_empty_manifest(tmp_env, tmp_path):
    from zoo.data.manifest import scan

    root = tmp_path / "utk"
    root.mkdir()
    (root / "notes.txt").write_text("x")
    (root / f"20_0_0_{UTK_DATE.format(1)}.jpg.chip.jpg").write_bytes(b"")
    m = scan("utkface", root, progress=False)
    assert m.frame.empty and len(m.issues) == 2 and all(i.excluded for i in m.issues)


# ---- cache -----------------------------------------------------------------------------------------------------

def test_build_cache_rows_follow_manifest_and_are_not_rebuilt(tmp_env, tmp_path):
    from zoo.data.cache import build_cache, cache_path, decode_image, load_images
    from zoo.data.manifest import build_manifest

    root = tmp_path / "utk"
    _utk_tree(root, n=6)
    # A wide image: left and right quarters red/blue, the centre green; the square centre crop is all green.
    wide = np.zeros((24, 48, 3), np.uint8)
    wide[:, :12] = (0, 0, 255)
    wide[:, 12:36] = (0, 255, 0)
    wide[:, 36:] = (255, 0, 0)
    wide_name = f"50_1_0_{UTK_DATE.format(77)}.jpg.chip.jpg"
    (root / wide_name).write_bytes(cv2.imencode(".jpg", wide, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    m = build_manifest("utkface", root, progress=False, workers=2)
    out = build_cache(m, 16, progress=False)
    assert out == cache_path(m, 16) and out.is_relative_to(tmp_env.cache)
    arr = np.load(out)
    assert arr.shape == (7, 16, 16, 3) and arr.dtype == np.uint8
    for row, path in zip(arr, m.abspaths()):
        assert np.array_equal(row, decode_image(path, 16))
    w = arr[m.frame.index[m.frame["path"] == wide_name][0]].reshape(-1, 3).mean(0)  # RGB
    assert w[1] > 200 and w[0] < 40 and w[2] < 40, w
    mtime = out.stat().st_mtime_ns
    assert build_cache(m, 16, progress=False) == out and out.stat().st_mtime_ns == mtime
    assert load_images(m, 16, progress=False).shape == (7, 16, 16, 3) and out.stat().st_mtime_ns == mtime
    assert not list(out.parent.glob("*.partial*"))


def test_square_resize_centre_crops():
    from zoo.data.cache import square_resize

    tall = np.zeros((40, 20, 3), np.uint8)
    tall[10:30] = 255  # the centre 20x20 square is white, the top and bottom 10 rows black
    assert (square_resize(tall, 10) == 255).all()


# ---- CLI -------------------------------------------------------------------------------------------------------

def test_cli_scan_prints_counts_and_irregular_names(tmp_env, tmp_path, capsys):
    from zoo.cli import main

    root = tmp_path / "UTKFace"
    _utk_tree(root, n=10)
    for name in ("39_1_20170116174525125.jpg.chip.jpg", "14_0_0_2017011022340900.jpg.chip.jpg"):
        make_jpeg(root / name, size=(24, 24))
    (root / f"30_5_0_{UTK_DATE.format(500)}.jpg.chip.jpg").write_bytes(b"\xff\xd8junk")
    assert main(["data", "scan", "--dataset", "utkface", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "utkface: 12 usable images" in out
    assert "irregular names (kept): 2" in out and "excluded files: 1" in out
    assert "39_1_20170116174525125.jpg.chip.jpg" in out and "race field missing" in out
    assert "14_0_0_2017011022340900.jpg.chip.jpg" in out and "irregular date" in out
    assert "gender field" in out
    assert (tmp_env.artifacts / "splits" / "utkface.tsv").is_file()


def test_cli_scan_missing_root_is_a_clear_error(tmp_env, tmp_path, capsys):
    from zoo.cli import main

    missing = tmp_path / "nowhere"
    assert main(["data", "scan", "--dataset", "utkface", "--root", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nowhere" in err and "not a directory" in err
    assert not (tmp_env.artifacts / "splits" / "utkface.tsv").exists()


def test_cli_scan_other_datasets(tmp_env, tmp_path, capsys):
    """A dataset without gender labels (FG-NET) scans and reports too."""
    from zoo.cli import main

    root = tmp_path / "fgnet"
    for s in range(1, 6):
        for age in (2, 20, 45):
            make_jpeg(root / f"{s:03d}A{age:02d}.JPG", size=(16, 16))
    assert main(["data", "scan", "--dataset", "fgnet", "--root", str(root)]) == 0
    assert "fgnet: 15 usable images" in capsys.readouterr().out


# ---- real data -------------------------------------------------------------------------------------------------

@pytest.mark.real_data
def test_real_utkface_scan_reproduces_committed_split(tmp_env):
    from zoo.data.manifest import scan
    from zoo.data.splits import split_file_path
    from zoo.paths import REPO, shared_data_dir

    root = shared_data_dir() / "utkface" / "UTKFace"
    if not root.is_dir():
        pytest.skip(f"real UTKFace not available at {root} (../shared/data absent)")
    committed = REPO / "artifacts" / "splits" / "utkface.tsv"
    assert not split_file_path("utkface").exists()  # computed from scratch, not read from the committed file
    m = scan("utkface", root, progress=False)
    assert len(m.frame) == 21_352
    assert m.frame["race"].isna().sum() == 3
    assert not [i for i in m.issues if i.excluded]
    assert sum("irregular date" in i.reason for i in m.issues) == 5
    assert split_file_path("utkface").read_bytes() == committed.read_bytes()


def test_concurrent_jobs_wait_for_one_build_of_a_shared_cache_file(tmp_env, tmp_path, monkeypatch):
    """Two trainings started together once crashed: both scanned UTKFace and raced on the manifest's temporary
    file. A second job now waits for the first one's manifest and decoded-image array and uses them as they are."""
    import subprocess
    import sys
    import time

    from zoo.data.cache import _build, cache_path
    from zoo.data.manifest import manifest_path, scan
    from zoo.paths import cache_lock

    shared = tmp_path / "shared"
    _utk_tree(shared / "utkface" / "UTKFace", n=6)
    monkeypatch.setenv("ZOO_SHARED_DATA", str(shared))
    child = ("from zoo.data.cache import build_cache; from zoo.data.manifest import load_manifest\n"
             "m = load_manifest('utkface'); print(m.hash, build_cache(m, 16, progress=False))")
    with cache_lock("manifest-utkface"):  # this test is the first job, scanning
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
        time.sleep(3)  # ample for the child to start and, unlocked, to scan
        assert not manifest_path("utkface").exists()
        m = scan("utkface", shared / "utkface" / "UTKFace", progress=False)
        manifest_time = manifest_path("utkface").stat().st_mtime_ns
        out = cache_path(m, 16)
        with cache_lock(out.stem):  # as build_cache holds it while decoding
            time.sleep(2)
            assert not list(out.parent.glob("*.npy"))  # the child waits instead of decoding
            _build(m, 16, out, workers=1, progress=False, framing=None)
    cache_time = out.stat().st_mtime_ns
    got, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and got.split() == [m.hash, str(out)]
    assert manifest_path("utkface").stat().st_mtime_ns == manifest_time and out.stat().st_mtime_ns == cache_time
