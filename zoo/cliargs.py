"""List arguments shared by the `python -m zoo` and `python -m bench` command lines (light: argparse only).

Every list option (`--models`, `--datasets`, `--perturb`, `--members`, `--only`, `zoo evaluate`'s ids) takes
comma-separated values, may be repeated, and is normalised by `split_list`: `--models a,b`, `--models a --models b`
and `--models "a, b,a"` all give `["a", "b"]`.
"""
from __future__ import annotations

import argparse
from typing import Iterable

LIST_HELP = "comma-separated and/or repeatable; repeats count once"


def split_list(values: str | Iterable[str] | None) -> list[str]:
    """Items of one comma-separated string or of several (a repeated option), stripped, empties dropped, each once
    in first-seen order."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return list(dict.fromkeys(s.strip() for v in values for s in str(v).split(",") if s.strip()))


class ListAction(argparse.Action):
    """argparse action for a list option: each occurrence's values (comma-separated) are added to the list, which is
    normalised by `split_list`. The default (any value) is replaced by the first occurrence, never extended."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        previous = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, split_list([*previous, *([values] if isinstance(values, str) else values)]))


def add_list_argument(parser: argparse.ArgumentParser, *flags: str, help: str, default: str | None = None,
                      **kwargs) -> argparse.Action:
    """A list option (or positional, with nargs) parsed by `ListAction`; the parsed value is a list (or `default`
    as given when the option is absent); `--help` says it is comma-separated and repeatable."""
    return parser.add_argument(*flags, action=ListAction, default=default, help=f"{help} ({LIST_HELP})", **kwargs)
