"""Dataset adapters (readers) on tiny fixture trees of real JPEGs: labels parsed exactly, every bad file or row
reported as an excluded ScanIssue with a reason and absent from the manifest, broken label tables a clear error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_jpeg

UTK_DATE = "20170116{:09d}"


def _build(dataset: str, root: Path):
    from zoo.data.manifest import build_manifest

    return build_manifest(dataset, root, progress=False, workers=2)


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _excluded(m) -> dict[str, str]:
    return {i.path: i.reason for i in m.issues if i.excluded}


def _kept_issues(m) -> dict[str, str]:
    return {i.path: i.reason for i in m.issues if not i.excluded}


def _row(m, path: str) -> dict:
    rows = m.frame[m.frame["path"] == path]
    assert len(rows) == 1, f"{path} appears {len(rows)} times in the manifest"
    row = {k: None if not isinstance(v, str) and pd.isna(v) else v for k, v in rows.iloc[0].to_dict().items()}
    row["extras"] = json.loads(row["extras"])  # missing values as None: pandas keeps None, NaN or <NA> by dtype
    return row


def _assert_clean_paths(m) -> None:
    for p in m.frame["path"]:
        assert not Path(p).is_absolute() and "\\" not in p and ".." not in p.split("/"), p
        assert (m.root / p).is_file()


def test_all_adapters_registered():
    from zoo.data.readers import get_reader, list_readers

    assert {"utkface", "appa", "fgnet", "fairface", "csv", "folder"} <= set(list_readers())
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        get_reader("nope")


# ---- bad files: the same five kinds for every adapter ----------------------------------------------------------

BAD_KINDS = ("corrupt", "zero", "text", "huge", "truncated")


def _write_bad(root: Path, rel: dict[str, str]) -> None:
    """Write each bad kind at its dataset-specific relative path."""
    rng = np.random.default_rng(0)
    for kind, r in rel.items():
        p = root / r
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "corrupt":
            p.write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
        elif kind == "zero":
            p.write_bytes(b"")
        elif kind == "text":
            p.write_text("not an image\n")
        elif kind == "huge":
            make_jpeg(p, size=(64, 64))  # over the patched MAX_PIXELS (2,000) while the good ones (32x32) are under
        elif kind == "truncated":
            data = make_jpeg(p, size=(32, 32)).read_bytes()
            sos = data.index(b"\xff\xda")  # headers intact, entropy-coded scan cut in half
            p.write_bytes(data[: sos + (len(data) - sos) // 2])


def _tree_utkface(root: Path) -> tuple[list[str], dict[str, str]]:
    good = [f"{a}_{g}_{r}_{UTK_DATE.format(i)}.jpg.chip.jpg" for i, (a, g, r) in
            enumerate([(25, 0, 0), (31, 1, 2), (70, 0, 3)])]
    bad = {k: f"4{i}_0_0_{UTK_DATE.format(100 + i)}.jpg.chip.jpg" for i, k in enumerate(BAD_KINDS)}
    bad["text"] = "notes.txt"
    return good, bad


def _tree_fgnet(root: Path):
    bad = {k: f"0{50 + i}A1{i}.JPG" for i, k in enumerate(BAD_KINDS)}
    bad["text"] = "readme.txt"
    return ["001A02.JPG", "002A16.JPG", "078A11a.JPG"], bad


def _tree_appa(root: Path):
    names = ["000000.jpg", "000001.jpg", "000002.jpg"] + [f"90000{i}.jpg" for i in range(len(BAD_KINDS))]
    names[3 + BAD_KINDS.index("text")] = "900009.txt"
    _write_csv(root / "gt_avg_train.csv", "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age",
               [f"{n},10,30.0,3.0,{30 + i}" for i, n in enumerate(names)])
    _write_csv(root / "allcategories_train.csv", "file,gender,race,makeup,time,happiness",
               [f"{n},male,caucasian,makeup,young,happy" for n in names])
    for part in ("valid", "test"):
        _write_csv(root / f"gt_avg_{part}.csv", "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age",
                   [])
        _write_csv(root / f"allcategories_{part}.csv", "file,gender,race,makeup,time,happiness", [])
    good = [f"train/{n}_face.jpg" for n in names[:3]]
    bad = {k: f"train/{n}" if k == "text" else f"train/{n}_face.jpg" for k, n in zip(BAD_KINDS, names[3:])}
    return good, bad


def _tree_fairface(root: Path):
    good = ["train/1.jpg", "train/2.jpg", "val/1.jpg"]
    bad = {k: f"train/bad_{k}.jpg" for k in BAD_KINDS}
    bad["text"] = "train/notes.txt"
    for part in ("train", "val"):
        files = [f for f in good + list(bad.values()) if f.startswith(part + "/")]
        _write_csv(root / f"fairface_label_{part}.csv", "file,age,gender,race,service_test",
                   [f"{f},20-29,Male,White,True" for f in files])
    return good, bad


def _tree_csv(root: Path):
    good = ["img/a.jpg", "img/b.jpg", "c.jpg"]
    bad = {k: f"img/bad_{k}.jpg" for k in BAD_KINDS}
    bad["text"] = "img/notes.txt"
    _write_csv(root / "labels.csv", "path,age,gender", [f"{p},{20 + i},{i % 2}" for i, p in
                                                        enumerate(good + list(bad.values()))])
    return good, bad


def _tree_folder(root: Path):
    bad = {k: f"40/bad_{k}.jpg" for k in BAD_KINDS}
    bad["text"] = "40/notes.txt"
    return ["35/a.jpg", "35/b.jpg", "7/c.jpg"], bad


TREES = {"utkface": _tree_utkface, "fgnet": _tree_fgnet, "appa": _tree_appa, "fairface": _tree_fairface,
         "csv": _tree_csv, "folder": _tree_folder}


@pytest.mark.parametrize("dataset", sorted(TREES))
def test_bad_files_are_excluded_with_reason(dataset, tmp_path, monkeypatch):
    """Corrupt bytes, a zero-byte file, a text file, an image over the pixel cap and a truncated JPEG: each is an
    excluded ScanIssue with its own reason, none reaches the manifest; the good files all do."""
    monkeypatch.setattr("zoo.data.manifest.MAX_PIXELS", 2000)
    root = tmp_path / dataset
    good, bad = TREES[dataset](root)
    for g in good:
        make_jpeg(root / g)
    _write_bad(root, bad)
    m = _build(dataset, root)
    assert sorted(m.frame["path"]) == sorted(good)
    _assert_clean_paths(m)
    excluded = _excluded(m)
    assert set(bad.values()) <= set(excluded)
    assert "zero-byte" in excluded[bad["zero"]]
    assert "too large" in excluded[bad["huge"]]
    assert "decode" in excluded[bad["truncated"]]
    assert "not an image" in excluded[bad["corrupt"]]
    assert "not an image" in excluded[bad["text"]]
    assert all(i.reason for i in m.issues)


# ---- UTKFace ---------------------------------------------------------------------------------------------------

UTK_QUIRKS = {
    # name: (age, gender, race, kept-issue substring or None)
    f"25_0_0_{UTK_DATE.format(1)}.jpg.chip.jpg": (25, 0, "white", None),
    f"31_1_2_{UTK_DATE.format(2)}.jpg.chip.jpg": (31, 1, "asian", None),
    f"4_1_4_{UTK_DATE.format(3)}.jpg": (4, 1, "other", None),
    "39_1_20170116174525125.jpg.chip.jpg": (39, 1, None, "race field missing"),
    "24_0_1_20170116220224657 .jpg.chip.jpg": (24, 0, "black", "irregular date"),
    "55_0_0_20170116232725357jpg.chip.jpg": (55, 0, "white", "irregular date"),
    "14_0_0_2017011022340900.jpg.chip.jpg": (14, 0, "white", "irregular date"),  # 16-digit date
    "28_1_2_201701161846515488.jpg.chip.jpg": (28, 1, "asian", "irregular date"),  # 18-digit date
    f"30_0_9_{UTK_DATE.format(4)}.jpg.chip.jpg": (30, 0, None, "race field '9'"),
}
UTK_UNUSABLE = {
    f"abc_0_1_{UTK_DATE.format(5)}.jpg.chip.jpg": "age field",
    f"30_5_0_{UTK_DATE.format(6)}.jpg.chip.jpg": "gender field",
    "12.jpg": "fewer than two",
}


def test_utkface_real_quirks(tmp_path):
    root = tmp_path / "UTKFace"
    for name in [*UTK_QUIRKS, *UTK_UNUSABLE]:
        make_jpeg(root / name)
    m = _build("utkface", root)
    assert sorted(m.frame["path"]) == sorted(UTK_QUIRKS)
    kept, excluded = _kept_issues(m), _excluded(m)
    for name, (age, gender, race, note) in UTK_QUIRKS.items():
        row = _row(m, name)
        assert (row["age"], row["age_min"], row["age_max"], row["gender"]) == (age, age, age, gender)
        assert row["race"] == race if race else row["race"] is None
        assert row["dataset"] == "utkface" and row["subject_id"] is None and row["split"] in ("train", "val", "test")
        if note:
            assert note in kept[name], (name, kept.get(name))
        else:
            assert name not in kept
    for name, why in UTK_UNUSABLE.items():
        assert why in excluded[name]
    assert set(kept).isdisjoint(excluded)


def test_utkface_byte_identical_copies_get_suffixed_ids_and_one_split(tmp_path):
    root = tmp_path / "UTKFace"
    names = [f"{20 + i}_{i % 2}_0_{UTK_DATE.format(i)}.jpg.chip.jpg" for i in range(8)]
    for n in names:
        make_jpeg(root / n)
    # Two copies of the first file under other labels (UTKFace really has such pairs).
    copies = [f"21_1_1_{UTK_DATE.format(50)}.jpg.chip.jpg", f"90_0_2_{UTK_DATE.format(51)}.jpg.chip.jpg"]
    for c in copies:
        shutil.copyfile(root / names[0], root / c)
    m = _build("utkface", root)
    f = m.frame
    assert len(f) == 10 and f["image_id"].is_unique
    trio = f[f["path"].isin([names[0], *copies])].sort_values("path")
    base = trio["content_hash"].iloc[0][:16]
    assert trio["content_hash"].nunique() == 1
    assert list(trio["image_id"]) == [base, base + "-1", base + "-2"]  # suffixes in path order
    assert trio["split"].nunique() == 1
    assert f.loc[~f["path"].isin(trio["path"]), "image_id"].str.fullmatch(r"[0-9a-f]{16}").all()


@pytest.mark.parametrize("name,expected", [
    ("25_0_0_20170116174525125.jpg.chip.jpg", (25.0, 0, "white", [])),
    ("61_1_20170109142408075.jpg.chip.jpg", (61.0, 1, None, ["race field missing (race unknown)"])),
    ("121_0_0_20170116174525125.jpg.chip.jpg", None),
    ("3_x_0_20170116174525125.jpg.chip.jpg", None),
])
def test_parse_utkface_name(name, expected):
    from zoo.data.adapters.utkface import parse_utkface_name

    rec, reasons = parse_utkface_name(name)
    if expected is None:
        assert rec is None and reasons
    else:
        assert (rec.age, rec.gender, rec.race, reasons) == expected


# ---- APPA-REAL -------------------------------------------------------------------------------------------------

GT_HEADER = "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age"
CAT_HEADER = "file,gender,race,makeup,time,happiness"


def _appa_tree(root: Path) -> None:
    _write_csv(root / "gt_avg_train.csv", GT_HEADER, [
        "000000.jpg,38,30.5,4.25,33",
        "000001.jpg,12,61.0,7.5,58",
        "000002.jpg,10,20.0,2.0,21",  # image missing
        "000003.jpg,10,20.0,2.0,n/a",  # age does not parse
        "000004.jpg,10,20.0,2.0,25",  # gender 'unknown'
        "000005.jpg,10,20.0,2.0,25",  # race 'martian'
    ])
    _write_csv(root / "allcategories_train.csv", CAT_HEADER, [
        "000000.jpg,male,caucasian,makeup,young,happy",
        "000001.jpg,female,afroamerican,no_makeup,old,neutral",
        "000002.jpg,male,asian,makeup,young,happy",
        "000003.jpg,male,asian,makeup,young,happy",
        "000004.jpg,unknown,asian,makeup,young,happy",
        "000005.jpg,male,martian,makeup,young,happy",
    ])
    _write_csv(root / "gt_avg_valid.csv", GT_HEADER, ["004113.jpg,30,5.5,1.0,6"])
    _write_csv(root / "allcategories_valid.csv", CAT_HEADER, ["004113.jpg,female,asian,no_makeup,young,other"])
    _write_csv(root / "gt_avg_test.csv", GT_HEADER, ["005613.jpg,40,70.25,9.0,75"])
    _write_csv(root / "allcategories_test.csv", CAT_HEADER, [])  # 005613 has no categories row
    for rel in ("train/000000.jpg", "train/000000.jpg_face.jpg", "train/000001.jpg", "train/000003.jpg_face.jpg",
                "train/000004.jpg_face.jpg", "train/000005.jpg_face.jpg", "valid/004113.jpg_face.jpg",
                "test/005613.jpg", "test/005613.jpg_face.jpg"):
        make_jpeg(root / rel)


def test_appa_labels_and_official_split(tmp_path):
    root = tmp_path / "appa-real"
    _appa_tree(root)
    m = _build("appa", root)
    assert sorted(m.frame["path"]) == ["test/005613.jpg_face.jpg", "train/000000.jpg_face.jpg",
                                       "train/000001.jpg", "valid/004113.jpg_face.jpg"]
    r = _row(m, "train/000000.jpg_face.jpg")  # the face crop wins over the full photo
    assert (r["age"], r["gender"], r["race"], r["split"]) == (33.0, 0, "white", "train")
    assert r["extras"] == {"apparent_age": 30.5, "apparent_age_std": 4.25, "num_ratings": 38, "makeup": "makeup",
                           "time": "young", "happiness": "happy"}
    r = _row(m, "train/000001.jpg")  # no crop: the photo itself
    assert (r["age"], r["gender"], r["race"], r["split"]) == (58.0, 1, "black", "train")
    r = _row(m, "valid/004113.jpg_face.jpg")
    assert (r["age"], r["gender"], r["race"], r["split"]) == (6.0, 1, "asian", "val")
    r = _row(m, "test/005613.jpg_face.jpg")
    assert (r["age"], r["split"], r["race"]) == (75.0, "test", None) and r["gender"] is None
    assert r["extras"]["apparent_age"] == 70.25
    assert "not in allcategories_test.csv" in _kept_issues(m)["test/005613.jpg_face.jpg"]
    excluded = _excluded(m)
    assert "image file missing" in excluded["train/000002.jpg"]
    assert "real_age" in excluded["train/000003.jpg"]
    assert "gender" in excluded["train/000004.jpg"]
    assert "race" in excluded["train/000005.jpg"]


@pytest.mark.parametrize("file,header,missing", [
    ("gt_avg_train.csv", "file_name,num_ratings,apparent_age_avg,apparent_age_std", "real_age"),
    ("allcategories_valid.csv", "file,race,makeup,time,happiness", "gender"),
])
def test_appa_missing_columns_is_a_clear_error(tmp_path, file, header, missing):
    from zoo.data.readers import get_reader

    root = tmp_path / "appa-real"
    _appa_tree(root)
    _write_csv(root / file, header, [])
    with pytest.raises(ValueError, match=rf"{file}.*missing required column\(s\) {missing}"):
        get_reader("appa")(root)


def test_appa_without_label_files_is_a_clear_error(tmp_path):
    from zoo.data.readers import get_reader

    with pytest.raises(FileNotFoundError, match="gt_avg_train.csv"):
        get_reader("appa")(tmp_path)


# ---- FG-NET ----------------------------------------------------------------------------------------------------

def test_fgnet_names_subjects_and_exclusive_splits(tmp_path):
    root = tmp_path / "fgnet"
    good = {"001A02.JPG": (2, "fgnet:001", {}), "078A11a.JPG": (11, "fgnet:078", {"photo": "a"}),
            "078A11b.JPG": (11, "fgnet:078", {"photo": "b"}), "002A16.JPG": (16, "fgnet:002", {}),
            "003A00.jpg": (0, "fgnet:003", {}), "004A43.Jpeg": (43, "fgnet:004", {})}
    # 12 more subjects with 4 photos each, so splits have something to divide.
    for s in range(10, 22):
        for k, age in enumerate((3, 12, 25, 40)):
            good[f"{s:03d}A{age + k % 2:02d}.JPG"] = (age + k % 2, f"fgnet:{s:03d}", {})
    bad = ["001B02.JPG", "1A02.JPG", "001A2.JPG", "001A02c.JPG", "subject001_age2.jpg"]
    for name in [*good, *bad]:
        make_jpeg(root / name, size=(16, 16))
    m = _build("fgnet", root)
    assert sorted(m.frame["path"]) == sorted(good)
    for name, (age, subject, extras) in good.items():
        r = _row(m, name)
        assert (r["age"], r["subject_id"], r["extras"]) == (age, subject, extras)
        assert r["gender"] is None and r["race"] is None
    excluded = _excluded(m)
    for name in bad:
        assert "does not match" in excluded[name]
    assert (m.frame.groupby("subject_id")["split"].nunique() == 1).all()
    assert set(m.frame["split"]) == {"train", "val", "test"}


# ---- FairFace --------------------------------------------------------------------------------------------------

FF_HEADER = "file,age,gender,race,service_test"


def _fairface_tree(root: Path) -> None:
    _write_csv(root / "fairface_label_train.csv", FF_HEADER, [
        "train/1.jpg,50-59,Male,East Asian,True",
        "train/2.jpg,more than 70,Female,Southeast Asian,False",
        "train/3.jpg,0-2,Female,Latino_Hispanic,True",
        "train/4.jpg,20-29,Male,Middle Eastern,False",
        "train/5.jpg,adult,Male,White,False",  # unknown bin
        "train/6.jpg,20-29,X,White,False",  # unknown gender
        "train/7.jpg,20-29,Male,Martian,False",  # unknown race
        "train/8.jpg,20-29,Male,White,False",  # image missing
    ])
    _write_csv(root / "fairface_label_val.csv", FF_HEADER, [
        "val/1.jpg,3-9,Male,Indian,True",
        "val/2.jpg,30-39,Female,White,False",
        "val/3.jpg,10-19,Male,Black,True",
    ])
    for rel in [f"train/{i}.jpg" for i in range(1, 8)] + [f"val/{i}.jpg" for i in range(1, 4)]:
        make_jpeg(root / rel, size=(16, 16))


def test_fairface_bins_races_and_splits(tmp_path):
    from zoo.data.adapters.fairface import train_or_val

    root = tmp_path / "fairface"
    _fairface_tree(root)
    m = _build("fairface", root)
    expected = {  # path: (age_min, age_max, gender, race, race_detail, service_test)
        "train/1.jpg": (50, 59, 0, "asian", "East Asian", True),
        "train/2.jpg": (70, 100, 1, "asian", "Southeast Asian", False),
        "train/3.jpg": (0, 2, 1, "latino_hispanic", "Latino_Hispanic", True),
        "train/4.jpg": (20, 29, 0, "middle_eastern", "Middle Eastern", False),
        "val/1.jpg": (3, 9, 0, "indian", "Indian", True),
        "val/2.jpg": (30, 39, 1, "white", "White", False),
        "val/3.jpg": (10, 19, 0, "black", "Black", True),
    }
    assert sorted(m.frame["path"]) == sorted(expected)
    for path, (lo, hi, gender, race, detail, service) in expected.items():
        r = _row(m, path)
        assert (r["age_min"], r["age_max"], r["age"]) == (lo, hi, (lo + hi) / 2)
        assert (r["gender"], r["race"]) == (gender, race)
        assert r["extras"]["race_detail"] == detail and r["extras"]["service_test"] is service
        # official val -> our test; official train -> our train/val by the file-name hash
        assert r["split"] == ("test" if path.startswith("val/") else train_or_val(path))
    excluded = _excluded(m)
    assert "age bin" in excluded["train/5.jpg"]
    assert "gender" in excluded["train/6.jpg"]
    assert "race" in excluded["train/7.jpg"]
    assert "image file missing" in excluded["train/8.jpg"]


def test_fairface_train_val_split_is_deterministic_80_20():
    from zoo.data.adapters.fairface import train_or_val

    names = [f"train/{i}.jpg" for i in range(4000)]
    first = [train_or_val(n) for n in names]
    assert first == [train_or_val(n) for n in reversed(names)][::-1]
    assert set(first) == {"train", "val"}
    assert 0.18 < first.count("val") / len(first) < 0.22


def test_fairface_missing_column_is_a_clear_error(tmp_path):
    from zoo.data.readers import get_reader

    root = tmp_path / "fairface"
    _fairface_tree(root)
    _write_csv(root / "fairface_label_val.csv", "file,age,gender", ["val/1.jpg,3-9,Male"])
    with pytest.raises(ValueError, match=r"fairface_label_val.csv.*missing required column\(s\) race"):
        get_reader("fairface")(root)


# ---- generic csv / folder --------------------------------------------------------------------------------------

def test_csv_reader_labels_extras_and_bad_rows(tmp_path):
    root = tmp_path / "mine"
    _write_csv(root / "labels.csv", "path,age,gender,race,subject_id,split,quality,age_min,age_max", [
        "img/1.jpg,30,0,white,s1,train,0.9,,",
        "img/2.jpg,41.5,female,Black,s2,,0.5,,",
        "img/3.jpg,7,M,,,valid,,,",
        "img\\4.jpg,60,f,asian,s2,test,hello,,",
        "img/5.jpg,,1.0,,,,,10,20",  # interval label only; gender as pandas writes a gappy column
        "img/6.jpg,20,unknown,,,,,,",
        "img/7.jpg,abc,0,,,,,,",
        "img/8.jpg,20,0,martian,,,,,",
        "img/9.jpg,20,0,,,holdout,,,",
        "img/missing.jpg,20,0,,,,,,",
        "/abs/1.jpg,20,0,,,,,,",
        "../outside.jpg,20,0,,,,,,",
        "img/1.jpg,31,0,white,s1,train,,,",
    ])
    for i in range(1, 10):
        make_jpeg(root / f"img/{i}.jpg", size=(16, 16))
    make_jpeg(tmp_path / "outside.jpg", size=(16, 16))
    m = _build("csv", root)
    _assert_clean_paths(m)
    assert sorted(m.frame["path"]) == [f"img/{i}.jpg" for i in range(1, 6)]
    got = {p: _row(m, p) for p in m.frame["path"]}
    assert [(got[p]["age"], got[p]["gender"], got[p]["race"], got[p]["subject_id"]) for p in sorted(got)] == [
        (30.0, 0, "white", "s1"), (41.5, 1, "black", "s2"), (7.0, 0, None, None), (60.0, 1, "asian", "s2"),
        (15.0, 1, None, None)]
    assert (got["img/5.jpg"]["age_min"], got["img/5.jpg"]["age_max"]) == (10.0, 20.0)
    assert got["img/1.jpg"]["extras"] == {"quality": 0.9} and got["img/4.jpg"]["extras"] == {"quality": "hello"}
    assert (got["img/1.jpg"]["split"], got["img/3.jpg"]["split"], got["img/4.jpg"]["split"]) == ("train", "val",
                                                                                                  "test")
    excluded = _excluded(m)
    assert "unknown gender" in excluded["img/6.jpg"]
    assert "age" in excluded["img/7.jpg"]
    assert "unknown race" in excluded["img/8.jpg"]
    assert "unknown split" in excluded["img/9.jpg"]
    assert "missing" in excluded["img/missing.jpg"]
    assert "absolute" in excluded["/abs/1.jpg"]
    assert "leaves the dataset root" in excluded["../outside.jpg"]
    assert "listed twice" in excluded["img/1.jpg"]


def test_csv_reader_missing_columns_and_file(tmp_path):
    from zoo.data.readers import get_reader

    _write_csv(tmp_path / "labels.csv", "path,gender", ["a.jpg,0"])
    with pytest.raises(ValueError, match=r"labels.csv.*missing required column\(s\) age"):
        get_reader("csv")(tmp_path)
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        get_reader("csv")(tmp_path / "elsewhere")


def test_folder_reader(tmp_path):
    root = tmp_path / "byage"
    for rel in ("35/a.jpg", "35/b.JPG", "2/c.jpg", "80/sub/d.jpg", "abc/e.jpg", "3.5/f.jpg", "999/g.jpg",
                "loose.jpg"):
        make_jpeg(root / rel, size=(16, 16))
    (root / "35" / "notes.txt").write_text("hi")
    m = _build("folder", root)
    assert dict(zip(m.frame["path"], m.frame["age"])) == {"35/a.jpg": 35.0, "35/b.JPG": 35.0, "2/c.jpg": 2.0,
                                                          "80/sub/d.jpg": 80.0}
    excluded = _excluded(m)
    assert set(excluded) == {"abc/e.jpg", "3.5/f.jpg", "999/g.jpg", "loose.jpg", "35/notes.txt"}
    assert "not an integer age" in excluded["abc/e.jpg"] and "age folder" in excluded["loose.jpg"]


# ------------------------------------------------------------------------------------------------------ CelebA-HQ
CELEB_NAMES = [f"A{i}" for i in range(36)] + ["Blond_Hair", "Eyeglasses", "Male", "Young"]


def _celeb_row(name: str, male: int, blond: int = 0, young: int = 1) -> str:
    vals = [-1] * 36 + [1 if blond else -1, -1, 1 if male else -1, 1 if young else -1]
    return f"{name}  " + " ".join(map(str, vals))


def test_celebahq_attributes_and_real_quirks(tmp_path):
    """The quirks of the real file: a count line that disagrees with the rows, non-contiguous numbers, malformed and
    repeated rows, an image without a row and a row without an image, byte-identical images with other labels."""
    from zoo.data.adapters.celebahq import ATTRIBUTE_FILE

    root = tmp_path / "celebahq"
    rows = []
    for i in range(40):
        n = 2 * i + 5  # non-contiguous
        make_jpeg(root / "images" / f"{n}.jpg")
        rows.append(_celeb_row(f"{n}.jpg", male=i % 3 == 0, blond=i % 4 == 0))
    shutil.copyfile(root / "images" / "5.jpg", root / "images" / "30000.jpg")  # byte-identical, other labels
    rows.append(_celeb_row("30000.jpg", male=1, blond=0, young=0))
    rows.append("7.jpg  1 -1")  # malformed: too few values (7.jpg has a good row above: that one is kept)
    rows.append(_celeb_row("9.jpg", male=1))  # a second row for 9.jpg
    rows.append(_celeb_row("999.jpg", male=0))  # no such image
    rows.append(_celeb_row("11.jpg", male=0).replace(" -1", " 0", 1))  # a value that is not 1 / -1
    make_jpeg(root / "images" / "1234.jpg")  # an image without a row
    (root / ATTRIBUTE_FILE).write_text(f"30000\n{' '.join(CELEB_NAMES)}\n" + "\n".join(rows) + "\n")
    m = _build("celebahq", root)
    _assert_clean_paths(m)
    assert m.framing == "detect"
    excluded, kept = _excluded(m), _kept_issues(m)
    assert excluded["images/1234.jpg"] == f"no row in {ATTRIBUTE_FILE}"
    assert "missing" in excluded["images/999.jpg"]
    assert "2 values, expected 40" in excluded["images/7.jpg"]
    assert "'0' is not 1 or -1" in excluded["images/11.jpg"]
    assert "second row" in kept["images/9.jpg"]
    assert "declares '30000' rows" in kept[ATTRIBUTE_FILE]
    conflict = kept["images/5.jpg"]  # reported on the second of the pair in path order
    assert "byte-identical to images/30000.jpg with different labels" in conflict and "Blond_Hair 0 vs 1" in conflict
    f = m.frame
    assert len(f) == 41  # 40 + the copy; the malformed rows of 7, 9 and 11 came after their good rows
    a, b = _row(m, "images/5.jpg"), _row(m, "images/30000.jpg")
    assert a["split"] == b["split"]  # byte-identical: one split
    assert a["gender"] == 0 and b["gender"] == 0 and _row(m, "images/7.jpg")["gender"] == 1  # Male -> 0
    assert a["age"] is None and a["race"] is None
    assert a["extras"]["Blond_Hair"] == 1 and b["extras"]["Young"] == 0 and len(a["extras"]) == 40


def test_celebahq_fixed_framing_warps_every_image_from_its_declared_alignment(tmp_env, tmp_path):
    """`framing: fixed`: dots drawn where CelebA-HQ's declared alignment puts the 5 landmarks land on the template,
    at any image size and with no face to detect; a dataset that declares no alignment refuses it."""
    import cv2

    from zoo.data.adapters.celebahq import ATTRIBUTE_FILE, LANDMARKS
    from zoo.data.cache import cache_path, load_images
    from zoo.data.manifest import build_manifest
    from zoo.data.readers import register_reader
    from zoo.faces import CROP_SIZE, TEMPLATE

    root = tmp_path / "celebahq"
    (root / "images").mkdir(parents=True)
    sides = (64, 100, 256)
    for i, side in enumerate(sides):
        img = np.zeros((side, side, 3), np.uint8)
        for x, y in np.array(LANDMARKS) * side:
            cv2.circle(img, (round(x), round(y)), max(1, side // 40), (255, 255, 255), -1)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
    rows = [_celeb_row(f"{i}.png", male=i % 2) for i in range(len(sides))]
    (root / ATTRIBUTE_FILE).write_text(f"{len(rows)}\n{' '.join(CELEB_NAMES)}\n" + "\n".join(rows) + "\n")
    m = _build("celebahq", root)
    crops = load_images(m, 100, progress=False, framing="fixed")
    assert cache_path(m, 100, "fixed") != cache_path(m, 100) and "fixed" in cache_path(m, 100, "fixed").name
    on = np.round(TEMPLATE * 100 / CROP_SIZE).astype(int)
    for crop in crops:
        assert all(crop[y, x].mean() > 150 for x, y in on), [crop[y, x].mean() for x, y in on]
        assert crop[5, 50].mean() < 20 and crop[50, 50].mean() < 20  # between the dots: dark
    with pytest.raises(ValueError, match="'utkface' declares no fixed alignment"):
        build_manifest("utkface", root, progress=False, framing="fixed")
    with pytest.raises(ValueError, match="fixed framing needs the dataset's landmarks"):
        register_reader("nolandmarks", framing="fixed")
    with pytest.raises(ValueError, match="5 \\(x, y\\) fractions"):
        register_reader("badlandmarks", landmarks=[(0.5, 1.5)] * 5)


def test_celebahq_splits_are_60_20_20_by_gender(tmp_path):
    from zoo.data.adapters.celebahq import ATTRIBUTE_FILE

    root = tmp_path / "celebahq"
    rows = []
    for i in range(200):
        make_jpeg(root / "images" / f"{i}.jpg", size=(8, 8))
        rows.append(_celeb_row(f"{i}.jpg", male=i < 60))
    (root / ATTRIBUTE_FILE).write_text(f"200\n{' '.join(CELEB_NAMES)}\n" + "\n".join(rows) + "\n")
    f = _build("celebahq", root).frame
    table = pd.crosstab(f["gender"], f["split"])
    assert table.loc[0].to_dict() == {"test": 12, "train": 36, "val": 12}
    assert table.loc[1].to_dict() == {"test": 28, "train": 84, "val": 28}


@pytest.mark.parametrize("header,match", [("", "count line and a line of attribute names"),
                                          ("3\nA B C\n", "should name 40 distinct attributes")])
def test_celebahq_broken_attribute_file_is_a_clear_error(tmp_path, header, match):
    from zoo.data.adapters.celebahq import ATTRIBUTE_FILE

    root = tmp_path / "celebahq"
    make_jpeg(root / "images" / "1.jpg")
    (root / ATTRIBUTE_FILE).write_text(header)
    with pytest.raises(ValueError, match=match):
        _build("celebahq", root)
    (root / ATTRIBUTE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=ATTRIBUTE_FILE):
        _build("celebahq", root)


def test_celebahq_real_data_matches_its_readme(tmp_env):
    """The shared CelebA-HQ folder (skipped without it): counts and quirks as ../shared/data/README.md states, and
    its faces where the declared fixed alignment says they are."""
    from zoo.data.adapters.celebahq import LANDMARKS
    from zoo.data.detections import detections, landmarks_of
    from zoo.paths import shared_data_dir

    root = shared_data_dir() / "celebahq"
    if not root.is_dir():
        pytest.skip("../shared/data/celebahq is absent")
    m = _build("celebahq", root)
    f = m.frame
    assert len(f) == 27076 and (f["gender"] == 0).sum() == 9996
    extras = f["extras"].map(json.loads)
    assert extras.map(lambda e: e["Blond_Hair"] or e["Eyeglasses"]).sum() == 5899
    assert f["image_id"].str.contains("-").sum() == 22  # byte-identical duplicates
    assert sum("different labels" in i.reason for i in m.issues) == 15
    assert not any(i.excluded for i in m.issues)
    train = np.flatnonzero(f["split"] == "train")[:300]
    found = landmarks_of(detections(m, train, progress=False)) / 64  # the images are 64 x 64
    found = found[~np.isnan(found).any(axis=(1, 2))]
    assert len(found) > 280
    assert np.abs(np.median(found, axis=0) - LANDMARKS).max() < 0.01  # under 0.64 px

