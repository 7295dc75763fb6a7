"""List arguments of both CLIs: comma-separated and/or repeated, normalised by one parser (zoo.cliargs)."""
import pytest

from zoo.cliargs import split_list

SPELLINGS = (["--models", "a,b"], ["--models", "a", "--models", "b"], ["--models", "a, b,a"],
             ["--models", "a,", "--models", " b , a"])


def test_split_list():
    assert split_list("a, b,a") == ["a", "b"] == split_list(["a", "b,a", " "]) == split_list(["a,b"])
    assert split_list(None) == [] and split_list("") == [] and split_list(" , ") == []


@pytest.mark.parametrize("argv", SPELLINGS)
def test_bench_run_and_zoo_predict_parse_model_lists_alike(argv):
    from bench.__main__ import _parser
    from zoo.cli import build_parser

    assert _parser().parse_args(["run", *argv]).models == ["a", "b"]
    assert build_parser().parse_args(["predict", "x.jpg", *argv]).models == ["a", "b"]


def test_every_list_option_is_comma_separated_and_repeatable():
    from bench.__main__ import _parser
    from zoo.cli import build_parser

    b = _parser().parse_args(["run", "--datasets", "utkface:test,appa", "--datasets", "appa",
                              "--perturb", "blur", "--perturb", "jpeg,blur"])
    assert b.datasets == ["utkface:test", "appa"] and b.perturb == ["blur", "jpeg"]
    d = _parser().parse_args(["run"])  # defaults untouched by the list action
    assert (d.models, d.datasets, d.perturb) == ("all", "utkface:test", "none")
    z = build_parser()
    assert z.parse_args(["predict", "x.jpg"]).models == "best"
    assert z.parse_args(["ensemble", "--members", "a,b", "--members", "c,a"]).members == ["a", "b", "c"]
    assert z.parse_args(["grid", "g.yaml", "--only", "x", "--only", "y,x"]).only == ["x", "y"]
    assert z.parse_args(["evaluate", "a,b", "b", "c"]).models == ["a", "b", "c"]


def test_help_says_lists_are_repeatable(capsys):
    from bench.__main__ import _parser
    from zoo.cli import build_parser

    for parser, argv in ((_parser(), ["run", "--help"]), (build_parser(), ["predict", "--help"])):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert "repeatable" in " ".join(capsys.readouterr().out.split())
