"""Data safety of `zoo data scan`: named datasets, authoritative split files, the dataset root (symlinks, `/`),
decompression bombs and non-UTF-8 label files; plus two named CSV datasets benched side by side."""
from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import make_jpeg

from conftest import REPO  # noqa: E402
UTK_DATE = "20170116{:09d}"


def _utk_name(i: int) -> str:
    return f"{(7 * i) % 80 + 1}_{i % 2}_{i % 5}_{UTK_DATE.format(i)}.jpg.chip.jpg"


def _utk_tree(root: Path, ids: range) -> list[str]:
    names = [_utk_name(i) for i in ids]
    for name in names:
        make_jpeg(root / name, size=(24, 24))
    return names


def _committed_utkface_split() -> bytes:
    """artifacts/splits/utkface.tsv as committed (git's copy; the checkout's file where git is unavailable)."""
    try:
        return subprocess.run(["git", "show", "HEAD:artifacts/splits/utkface.tsv"], cwd=REPO, check=True,
                              capture_output=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return (REPO / "artifacts" / "splits" / "utkface.tsv").read_bytes()


def _error_line(stderr: str) -> str:
    """The CLI's one-line error: the last line of stderr (a progress bar may precede it)."""
    line = stderr.rstrip("\n").split("\n")[-1]
    assert line.startswith("error: "), stderr
    return line


def _split_lines(path: Path) -> dict[str, str]:
    from zoo.data.splits import read_split_file

    return read_split_file(path)


# ---- committed split files ---------------------------------------------------------------------------------------

def test_subset_scan_leaves_the_committed_utkface_split_byte_identical(tmp_env, tmp_path, capsys):
    """A few UTKFace-named files scanned as `utkface` are refused (nothing written); under their own name they scan
    beside it, and the committed file stays byte for byte what git holds."""
    from zoo.cli import main
    from zoo.data.manifest import load_manifest, manifest_path

    committed = _committed_utkface_split()
    assert committed.count(b"\n") == 21_354
    split_file = tmp_env.artifacts / "splits" / "utkface.tsv"
    split_file.parent.mkdir(parents=True)
    split_file.write_bytes(committed)
    root = tmp_path / "utk_subset"
    _utk_tree(root, range(6))

    assert main(["data", "scan", "--dataset", "utkface", "--root", str(root)]) == 2
    err = _error_line(capsys.readouterr().err)
    assert "finds 0 of the 21,352 images" in err and "--dataset utkface_part --reader utkface" in err
    assert "--resplit" in err
    assert split_file.read_bytes() == committed and not manifest_path("utkface").exists()

    assert main(["data", "scan", "--dataset", "utk_small", "--reader", "utkface", "--root", str(root)]) == 0
    assert "reader: utkface" in capsys.readouterr().out
    assert split_file.read_bytes() == committed
    assert len(_split_lines(tmp_env.artifacts / "splits" / "utk_small.tsv")) == 6
    m = load_manifest("utk_small")  # loadable by name; its side-car records the reader
    assert m.dataset == "utk_small" and m.reader == "utkface" and len(m.frame) == 6
    assert set(m.frame["dataset"]) == {"utk_small"}

    # A name that is not a reader must say which reader parses it.
    assert main(["data", "scan", "--dataset", "mine", "--root", str(root)]) == 2
    assert "--reader" in capsys.readouterr().err
    assert split_file.read_bytes() == committed


@pytest.mark.real_data
def test_real_utkface_subset_scan_is_refused(tmp_env, tmp_path):
    """The issue's case on real files: 300 UTKFace images copied out and scanned as `utkface`."""
    from zoo.data.manifest import scan
    from zoo.paths import shared_data_dir

    real = shared_data_dir() / "utkface" / "UTKFace"
    if not real.is_dir():
        pytest.skip(f"real UTKFace not available at {real}")
    committed = _committed_utkface_split()
    split_file = tmp_env.artifacts / "splits" / "utkface.tsv"
    split_file.parent.mkdir(parents=True)
    split_file.write_bytes(committed)
    root = tmp_path / "UTKFace"
    root.mkdir()
    for p in sorted(real.iterdir())[:300]:
        shutil.copyfile(p, root / p.name)
    with pytest.raises(ValueError, match=r"finds 300 of the 21,352 images"):
        scan("utkface", root, progress=False)
    assert split_file.read_bytes() == committed


def test_split_file_is_authoritative_through_rescans(tmp_env, tmp_path, capsys):
    """Full scan → file; rescan → byte-identical; subset → refused; new image → appended, old ids keep their
    split, a byte-identical copy joins its original's split; removed image → reported, kept listed; --resplit
    rewrites."""
    from zoo.cli import main
    from zoo.data.manifest import manifest_path, scan
    from zoo.data.splits import split_file_path

    root = tmp_path / "faces"
    names = _utk_tree(root, range(30))
    first = scan("faces", root, progress=False, reader="utkface")
    split_file = split_file_path("faces")
    original = split_file.read_bytes()
    assigned = first.frame.set_index("image_id")["split"].to_dict()
    assert _split_lines(split_file) == assigned and len(assigned) == 30

    assert scan("faces", root, progress=False).hash == first.hash  # the recorded reader is reused
    assert split_file.read_bytes() == original

    subset = tmp_path / "subset"
    subset.mkdir()
    for n in names[:20]:  # 20 of 30 found: under MIN_FOUND
        shutil.copyfile(root / n, subset / n)
    manifest_before = manifest_path("faces").read_bytes()
    with pytest.raises(ValueError, match="finds 20 of the 30 images"):
        scan("faces", subset, progress=False)
    assert split_file.read_bytes() == original and manifest_path("faces").read_bytes() == manifest_before

    make_jpeg(root / _utk_name(100), size=(24, 24))
    copy = "99_1_3_" + UTK_DATE.format(3) + ".jpg.chip.jpg"  # byte-identical to names[3], other labels
    shutil.copyfile(root / names[3], root / copy)
    grown = scan("faces", root, progress=False).frame.set_index("path")
    listed = _split_lines(split_file)
    assert len(listed) == 32
    assert all(listed[i] == s for i, s in assigned.items())  # nobody moved
    assert listed[grown.loc[_utk_name(100), "image_id"]] in ("train", "val", "test")
    assert grown.loc[copy, "split"] == grown.loc[names[3], "split"] == assigned[grown.loc[names[3], "image_id"]]
    grown_bytes = split_file.read_bytes()
    assert original.decode().splitlines()[0] == grown_bytes.decode().splitlines()[0]  # header kept

    gone = grown.loc[names[5], "image_id"]
    (root / names[5]).unlink()
    shrunk = scan("faces", root, progress=False)
    assert gone not in set(shrunk.frame["image_id"])
    assert [i.reason for i in shrunk.issues if i.path == gone] == \
        [f"listed in faces.tsv ({assigned[gone]}) but not found by this scan; stays listed there"]
    assert split_file.read_bytes() == grown_bytes  # still lists it

    assert main(["data", "scan", "--dataset", "faces", "--root", str(root), "--resplit"]) == 0
    assert "31 images listed, 31 in this manifest" in capsys.readouterr().out
    rewritten = _split_lines(split_file)
    assert gone not in rewritten and len(rewritten) == 31
    split_file.unlink()
    scan("faces", root, progress=False)  # from scratch: what --resplit wrote
    assert _split_lines(split_file) == rewritten


def test_a_moved_official_split_is_refused_without_resplit(tmp_env, tmp_path, make_jpeg):
    from zoo.data.manifest import scan
    from zoo.data.splits import split_file_path

    root = tmp_path / "own"
    rows = []
    for i in range(10):
        make_jpeg(root / f"{i}.jpg")
        rows.append({"path": f"{i}.jpg", "age": 20 + i, "split": "test" if i < 3 else "train"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    scan("own", root, progress=False, reader="csv")
    before = split_file_path("own").read_bytes()
    rows[0]["split"] = "train"
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    with pytest.raises(ValueError, match=r"1 images would change split .*--resplit"):
        scan("own", root, progress=False)
    assert split_file_path("own").read_bytes() == before
    scan("own", root, progress=False, resplit=True)
    assert split_file_path("own").read_bytes() != before


def test_dataset_names_are_safe_file_names(tmp_env, tmp_path):
    from zoo.data.manifest import check_dataset_name, scan

    for ok in ("utkface", "my_faces", "synth_ddpm-utkface-32px", "Set2"):
        assert check_dataset_name(ok) == ok
    for bad in ("", "../evil", "a/b", "a.seed1", "utk:test", "-x", "a b", "x" * 101):
        with pytest.raises(ValueError, match="not allowed"):
            check_dataset_name(bad)
    root = tmp_path / "r"
    _utk_tree(root, range(2))
    with pytest.raises(ValueError, match="not allowed"):
        scan("../evil", root, progress=False, reader="utkface")
    assert not (tmp_env.artifacts / "evil.tsv").exists() and not (tmp_env.base / "evil.tsv").exists()


# ---- the dataset root ----------------------------------------------------------------------------------------------

def test_symlinks_out_of_the_root_are_excluded_with_a_reason_in_both_readers(tmp_env, tmp_path, make_jpeg):
    """csv and folder readers: links to files or folders outside the root are excluded with the reason; a link
    inside the root is kept (csv) and the Browser's path check agrees on every file."""
    from dashboard.data import images
    from zoo.data.manifest import build_manifest

    outside = tmp_path / "outside"
    secret = make_jpeg(outside / "secret.jpg")
    make_jpeg(outside / "dir" / "x.jpg")

    csv_root = tmp_path / "csvset"
    make_jpeg(csv_root / "in.jpg")
    (csv_root / "link_out.jpg").symlink_to(secret)
    (csv_root / "link_in.jpg").symlink_to(csv_root / "in.jpg")
    (csv_root / "sub").symlink_to(outside / "dir")
    pd.DataFrame({"path": ["in.jpg", "link_out.jpg", "link_in.jpg", "sub/x.jpg"], "age": [30] * 4}) \
        .to_csv(csv_root / "labels.csv", index=False)
    m = build_manifest("csvset", csv_root, progress=False, workers=1, reader="csv")
    assert sorted(m.frame["path"]) == ["in.jpg", "link_in.jpg"]
    reasons = {i.path: i.reason for i in m.issues if i.excluded}
    assert reasons["link_out.jpg"] == f"outside the dataset root (symlink to {secret.resolve()})"
    assert reasons["sub/x.jpg"] == f"outside the dataset root (symlink to {(outside / 'dir' / 'x.jpg').resolve()})"

    folder_root = tmp_path / "folderset"
    make_jpeg(folder_root / "35" / "a.jpg")
    (folder_root / "35" / "out.jpg").symlink_to(secret)
    (folder_root / "40").symlink_to(outside / "dir")
    (folder_root / "41").symlink_to(folder_root / "35")
    (folder_root / "35" / "dangling.jpg").symlink_to(tmp_path / "nothing.jpg")
    m = build_manifest("folderset", folder_root, progress=False, workers=1, reader="folder")
    assert list(m.frame["path"]) == ["35/a.jpg"]
    reasons = {i.path: i.reason for i in m.issues if i.excluded}
    assert reasons["35/out.jpg"] == f"outside the dataset root (symlink to {secret.resolve()})"
    assert reasons["40"] == f"outside the dataset root (symlink to {(outside / 'dir').resolve()})"
    assert "not followed" in reasons["41"]
    assert reasons["35/dangling.jpg"].startswith("broken symlink")

    for root, kept, refused in ((csv_root, ["in.jpg", "link_in.jpg"], ["link_out.jpg", "sub/x.jpg"]),
                                (folder_root, ["35/a.jpg"], ["35/out.jpg", "40/x.jpg", "35/dangling.jpg"])):
        assert all(images.safe_image_path(root, p) is not None for p in kept)
        assert all(images.safe_image_path(root, p) is None for p in refused)


def test_filesystem_and_system_folders_are_no_dataset_root(tmp_env, tmp_path):
    from zoo.data.manifest import scan
    from zoo.data.readers import root_problem

    assert "filesystem root" in root_problem("/")
    assert "system folder" in root_problem("/etc") and "system folder" in root_problem("/proc/self")
    assert "home folder" in root_problem("~")
    assert "not a directory" in root_problem(tmp_path / "missing")
    assert root_problem(tmp_path) is None
    with pytest.raises(ValueError, match="filesystem root"):
        scan("everything", Path("/"), progress=False, reader="folder")


def test_browser_refuses_the_filesystem_root_as_image_folder(tmp_path, dashboard_env):
    pytest.importorskip("streamlit.testing.v1")
    from streamlit.testing.v1 import AppTest

    from dashboard import demo

    art = tmp_path / "artifacts"
    demo.write_demo_artifacts(art, n_images=40, n_models=2, registry=False, perturbations={})
    dashboard_env(art)
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=90)
    at.run()
    at.session_state["image_root"] = "/"
    at.switch_page("views/browser.py").run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning]
    assert any("refused" in w and "filesystem root" in w for w in warnings), warnings
    # refused, so each dataset's scanned root (the demo's images) is used instead of `/`
    assert any("(manifest)" in str(c.value) for c in at.caption)


# ---- unusable files --------------------------------------------------------------------------------------------

def _png_header(path: Path, w: int, h: int) -> Path:
    """A PNG that declares w x h pixels (the pixel data is a stub: PIL reads the size from the header alone)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_too_large_not_unrecognised(tmp_env, tmp_path, make_jpeg):
    from zoo.data.manifest import build_manifest, check_image

    root = tmp_path / "bombs"
    huge = _png_header(root / "30" / "huge.png", 20_000, 20_000)  # PIL refuses it outright (> 2x its limit)
    big = _png_header(root / "30" / "big.png", 10_000, 10_000)  # PIL only warns; our 40 MP guard refuses it
    make_jpeg(root / "30" / "ok.jpg")
    assert check_image(huge) == (None, "image too large (400 MP > 40 MP; decompression-bomb guard)")
    assert check_image(big) == (None, "image too large (10000x10000 px > 40 MP)")
    m = build_manifest("bombs", root, progress=False, workers=1, reader="folder")
    assert list(m.frame["path"]) == ["30/ok.jpg"]
    reasons = {i.path: i.reason for i in m.issues}
    assert reasons["30/huge.png"].startswith("image too large") and reasons["30/big.png"].startswith("image too")


def test_non_utf8_label_file_error_names_the_file(tmp_env, tmp_path, make_jpeg, capsys):
    from zoo.cli import main

    root = tmp_path / "latin"
    make_jpeg(root / "a.jpg")
    (root / "labels.csv").write_bytes("path,age,note\na.jpg,30,café\n".encode("latin-1"))
    assert main(["data", "scan", "--dataset", "latin", "--reader", "csv", "--root", str(root)]) == 2
    err = _error_line(capsys.readouterr().err)
    assert str(root / "labels.csv") in err and "not UTF-8" in err


# ---- named datasets in the bench -----------------------------------------------------------------------------------

def _csv_dataset(root: Path, n: int, seed: int) -> Path:
    from conftest import learnable_face

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age, gender = int(rng.integers(1, 90)), int(rng.integers(0, 2))
        root.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"img{i}.jpg"), learnable_face(rng, age, gender))
        rows.append({"path": f"img{i}.jpg", "age": age, "gender": gender})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def _utk_faces(root: Path, n: int) -> None:
    """n UTKFace-named synthetic faces in four strata (ages 25/35 x gender), so every split gets images."""
    from conftest import learnable_face

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        age, gender = (25, 35)[i % 2], (i // 2) % 2
        cv2.imwrite(str(root / f"{age}_{gender}_0_{UTK_DATE.format(i)}.jpg.chip.jpg"), learnable_face(rng, age, gender))


def test_two_csv_datasets_coexist_and_each_benches_its_own_rows(tmp_env, tmp_path, capsys):
    import torch

    from bench import store
    from bench.run import RunOptions, run
    from zoo.cli import main
    from zoo.config import TrainConfig
    from zoo.data.manifest import load_manifest, manifest_path, scan
    from zoo.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        utk = tmp_path / "utk"
        _utk_faces(utk, 40)
        scan("utkface", utk, progress=False)
        cfg = TrainConfig(name="tiny", backbone="seed_cnn", backbone_kwargs={"width": 8, "hidden": 32},
                          formulation="dldl", img_size=32, epochs=1, batch_size=8, lr=3e-3, warmup_epochs=0.5)
        model_id = train(cfg, progress=False)["id"]

        a, b = _csv_dataset(tmp_path / "set_a", 8, 1), _csv_dataset(tmp_path / "set_b", 6, 2)
        for name, root in (("a", a), ("b", b)):
            assert main(["data", "scan", "--dataset", name, "--reader", "csv", "--framing", "aligned",
                         "--root", str(root)]) == 0
            if name == "a":
                a_files = {p: p.read_bytes() for p in (manifest_path("a"), manifest_path("a").with_suffix(".json"),
                                                       tmp_env.artifacts / "splits" / "a.tsv")}
        capsys.readouterr()
        assert all(p.read_bytes() == v for p, v in a_files.items())  # scanning b left a alone
        ma, mb = load_manifest("a"), load_manifest("b")
        assert (ma.reader, mb.reader) == ("csv", "csv") and (len(ma.frame), len(mb.frame)) == (8, 6)
        assert ma.root == a.resolve() and mb.root == b.resolve()

        db = tmp_path / "b.duckdb"
        s = run(RunOptions(models=model_id, datasets=["a", "b"], perturb="none", db=db, batch_size=8,
                           progress=False))
        assert s["skipped"] == {} and s["rows"] == 8 + 6
    finally:
        torch.set_num_threads(threads)
    con = store.connect_read(db)
    try:
        for name, m in (("a", ma), ("b", mb)):
            preds = {r[0] for r in con.execute(f"SELECT image_id FROM predictions WHERE dataset = '{name}'").fetchall()}
            imgs = {r[0] for r in con.execute(f"SELECT image_id FROM images WHERE dataset = '{name}'").fetchall()}
            assert preds == imgs == set(m.frame["image_id"]), name
        assert {r[0] for r in con.execute("SELECT DISTINCT dataset FROM predictions").fetchall()} == {"a", "b"}
    finally:
        con.close()
