"""The README results table comes from the registry (and the bench DB's peers), never typed by hand."""
import json

import pytest

from bench.readme import END, START, markdown_table, results_frame, update_readme


def _run(root, run_id, name, mae, tta_mae=None, crop_mae=None):
    d = root / "runs" / run_id
    d.mkdir(parents=True)
    metrics = {"test": {"mae": mae, "rmse": mae * 1.5, "cs5": 0.5, "acc10": 0.8, "gender_acc": 0.9}}
    if tta_mae is not None:
        metrics["test_tta"] = {"mae": tta_mae}
    if crop_mae is not None:
        metrics["test_tta_crop"] = {"mae": crop_mae, "gender_acc": 0.93}
    (d / "run.json").write_text(json.dumps({"id": run_id, "name": name, "kind": "single", "params": 2_000_000,
                                            "config": {"backbone": "resnet18", "img_size": 64}, "metrics": metrics}))


def test_table_groups_sections_and_rewrites_only_the_marked_block(tmp_env, tmp_path):
    _run(tmp_env.artifacts, "a", "formulation/l1", 9.0)
    _run(tmp_env.artifacts, "b", "formulation/dldl", 8.0)
    _run(tmp_env.artifacts, "c", "headline-resnet18", 5.5, tta_mae=5.4, crop_mae=5.3)
    peer = {"id": "peer:x", "name": "peer x", "config": {"backbone": "external"}, "metrics": {"test": {"mae": 6.2}}}
    frame = results_frame("test", [peer])
    assert list(frame["model"]) == ["headline-resnet18", "peer x", "formulation/dldl", "formulation/l1"]
    table = markdown_table(frame)
    assert "| headline-resnet18 | resnet18 |  | 64 | 5.50 | 5.40 | 5.30 | 8.25 | 50.0% | 80.0% | 90.0% | 93.0% |" in \
        table
    # older records: no TTA metrics
    assert "| formulation/l1 | resnet18 |  | 64 | 9.00 | – | – | 13.50 | 50.0% | 80.0% | 90.0% | – |" in table
    assert "| peer x | external |" in table and table.count("\n") == 5

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold table\n{END}\noutro\n")
    update_readme(table, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text and table in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="marker"):
        update_readme(table, readme)


def test_bench_readme_prints_the_table_and_rewrites_the_block(tmp_env, tmp_path, monkeypatch, capsys):
    from bench import readme
    from bench.__main__ import main

    _run(tmp_env.artifacts, "c", "headline-resnet18", 5.5)
    assert main(["readme", "--db", str(tmp_path / "none.duckdb")]) == 0  # no DB: the registry's models only
    out = capsys.readouterr().out
    assert "| headline-resnet18 | resnet18 |" in out
    target = tmp_path / "README.md"
    target.write_text(f"{START}\n{END}\n")
    monkeypatch.setattr(readme.update_readme, "__defaults__", (target, "results"))
    assert main(["readme", "--update", "--db", str(tmp_path / "none.duckdb")]) == 0
    assert "| headline-resnet18 | resnet18 |" in target.read_text()
    target.write_text("no markers")
    assert main(["readme", "--update"]) == 2 and "bench readme:" in capsys.readouterr().err
