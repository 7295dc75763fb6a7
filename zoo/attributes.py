"""Attribute tasks: binary labels kept in a dataset's extras (CelebA-HQ's 40 attributes) as task heads, and composite
targets declared as data.

    tasks: [age, gender, attr:Eyeglasses, attr:blond_or_glasses]
    targets: {blond_or_glasses: "Blond_Hair | Eyeglasses"}

A target expression combines attribute names with `|` (or), `&` (and), `!` (not) and parentheses; `!` binds
tightest, then `&`, then `|`. It is parsed by a small recursive-descent parser (never eval'd). A label is NaN where
any attribute the expression names is unknown, so an image missing one operand never gets a guessed label.

Light on purpose (numpy and pandas only): the bench and the dashboard read attribute names and labels without torch.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

ATTR_PREFIX = "attr:"
# CelebA-HQ names start with digits too (`5_o_Clock_Shadow`); no operator character is allowed in a name.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
SYNTAX = "attribute names joined by | (or), & (and), ! (not) and parentheses, e.g. 'Blond_Hair | Eyeglasses'"
_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z0-9_][A-Za-z0-9_.\-]*)|(?P<op>[|&!()]))")


def task_attributes(tasks: Iterable[Any]) -> tuple[str, ...]:
    """The attribute names of `attr:NAME` tasks, in task order (the order of the model's attribute heads)."""
    return tuple(t[len(ATTR_PREFIX):] for t in tasks if isinstance(t, str) and t.startswith(ATTR_PREFIX))


def is_attribute_task(task: Any) -> bool:
    return isinstance(task, str) and task.startswith(ATTR_PREFIX) and NAME.fullmatch(task[len(ATTR_PREFIX):]) is not None


# ---- composite targets ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A parsed target expression. `tree`: ("name", n) | ("not", t) | ("and", a, b) | ("or", a, b)."""

    expr: str
    tree: tuple
    names: tuple[str, ...]  # the attributes it reads, in order of first appearance

    def evaluate(self, data: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """float [N] of 0/1, NaN where any attribute the expression names is unknown. `data`: a mapping (or a frame
        with these columns) of attribute -> 0/1/NaN values, or manifest rows (an `extras` column)."""
        if isinstance(data, pd.DataFrame) and "extras" in data.columns and not set(self.names) <= set(data.columns):
            data = attribute_frame(data, self.names)
        cols = {}
        for n in self.names:
            if n not in data:
                raise ValueError(f"target {self.expr!r}: no values for attribute {n!r}")
            cols[n] = np.asarray(data[n], dtype=float)
        unknown = np.zeros(len(next(iter(cols.values()))), bool)
        for v in cols.values():
            unknown |= np.isnan(v)
        out = _eval(self.tree, {n: np.nan_to_num(v) > 0.5 for n, v in cols.items()}).astype(float)
        out[unknown] = np.nan
        return out


def _eval(tree: tuple, values: dict[str, np.ndarray]) -> np.ndarray:
    op = tree[0]
    if op == "name":
        return values[tree[1]]
    if op == "not":
        return ~_eval(tree[1], values)
    a, b = _eval(tree[1], values), _eval(tree[2], values)
    return a & b if op == "and" else a | b


class _Parser:
    """or := and ('|' and)* ; and := not ('&' not)* ; not := '!' not | atom ; atom := NAME | '(' or ')'"""

    def __init__(self, expr: str):
        self.expr, self.tokens, pos = expr, [], 0
        while pos < len(expr):
            if expr[pos:].strip() == "":
                break
            m = _TOKEN.match(expr, pos)
            if m is None:
                bad = expr[pos:].lstrip()[0]
                raise self.error(f"unexpected character {bad!r}")
            self.tokens.append(("name", m["name"]) if m["name"] else ("op", m["op"]))
            pos = m.end()
        self.i = 0

    def error(self, what: str) -> ValueError:
        return ValueError(f"invalid target expression {self.expr!r}: {what}; write {SYNTAX}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, op: str) -> bool:
        if self.peek() == ("op", op):
            self.i += 1
            return True
        return False

    def parse(self) -> tuple:
        if not self.tokens:
            raise self.error("it is empty")
        tree = self.or_()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()[1]!r} after a complete expression")
        return tree

    def or_(self) -> tuple:
        tree = self.and_()
        while self.take("|"):
            tree = ("or", tree, self.and_())
        return tree

    def and_(self) -> tuple:
        tree = self.not_()
        while self.take("&"):
            tree = ("and", tree, self.not_())
        return tree

    def not_(self) -> tuple:
        return ("not", self.not_()) if self.take("!") else self.atom()

    def atom(self) -> tuple:
        tok = self.peek()
        if tok is None:
            raise self.error("it ends where an attribute name or '(' should follow")
        if tok[0] == "name":
            self.i += 1
            return ("name", tok[1])
        if self.take("("):
            tree = self.or_()
            if not self.take(")"):
                raise self.error("a '(' is never closed")
            return tree
        raise self.error(f"{tok[1]!r} where an attribute name or '(' should be")


def _names(tree: tuple) -> list[str]:
    return [tree[1]] if tree[0] == "name" else [n for t in tree[1:] for n in _names(t)]


def parse_target(expr: str, known: Iterable[str] | None) -> Target:
    """Parse a target expression. `known`: the attribute names it may use (None: check the syntax only). Bad syntax
    or an unknown name is a one-line ValueError naming the problem (and the known names)."""
    if not isinstance(expr, str):
        raise ValueError(f"a target expression is a string, got {expr!r:.60}")
    tree = _Parser(expr).parse()
    names = tuple(dict.fromkeys(_names(tree)))
    if known is not None:
        known = list(known)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"target {expr!r}: unknown attribute{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(known)) or '(none)'}")
    return Target(expr, tree, names)


# ---- labels from manifests -----------------------------------------------------------------------------------------
def _extras(frame: pd.DataFrame) -> list[dict]:
    if "extras" not in frame.columns:
        return [{}] * len(frame)
    return [json.loads(e) if isinstance(e, str) and e else (e if isinstance(e, dict) else {}) for e in frame["extras"]]


def _binary(v: Any) -> bool:
    return isinstance(v, (bool, int, float, np.integer, np.floating)) and v in (0, 1)


def binary_attributes(frame: pd.DataFrame) -> list[str]:
    """The extras keys of manifest rows whose every value is 0 / 1 (a dataset's binary attributes), sorted."""
    seen: dict[str, bool] = {}
    for e in _extras(frame):
        for k, v in e.items():
            seen[k] = seen.get(k, True) and _binary(v)
    return sorted(k for k, ok in seen.items() if ok)


def attribute_frame(frame: pd.DataFrame, names: Iterable[str] | None = None) -> pd.DataFrame:
    """Manifest rows -> one float column per binary attribute (`names`, default all), NaN where a row lacks it."""
    extras = _extras(frame)
    names = list(names) if names is not None else binary_attributes(frame)
    return pd.DataFrame({n: np.array([float(e[n]) if _binary(e.get(n)) else np.nan for e in extras], dtype=float)
                         for n in names}, index=frame.index)


def resolve_target(name: str, targets: Mapping[str, str], known: Iterable[str]) -> Target:
    """A task's attribute name -> its Target: a declared composite target, or a plain attribute of the data. An
    unknown name is a ValueError listing the known attributes and targets."""
    known = list(known)
    if name in targets:
        return parse_target(targets[name], known)
    if name in known:
        return Target(name, ("name", name), (name,))
    raise ValueError(f"unknown attribute {name!r}: neither a declared target ({', '.join(sorted(targets)) or 'none'}) "
                     f"nor a binary attribute of the data; known: {', '.join(sorted(known)) or '(none)'}")


def attribute_labels(frame: pd.DataFrame, name: str, targets: Mapping[str, str] | None = None) -> np.ndarray:
    """float [N] 0/1 labels of a plain attribute or a declared target for manifest rows (with `extras`), NaN where
    unknown. A name the rows do not have is a ValueError."""
    target = resolve_target(name, targets or {}, binary_attributes(frame))
    return target.evaluate(attribute_frame(frame, target.names))


def attribute_matrix(frames: list[pd.DataFrame], names: Iterable[str], targets: Mapping[str, str] | None = None
                     ) -> list[np.ndarray]:
    """Labels of several datasets' rows for the attribute tasks `names`: one float [N_i, K] per frame. A dataset
    without an attribute (UTKFace) gets NaN there (the loss is masked); a name no dataset has is a ValueError, raised
    before any image is decoded."""
    names, targets = list(names), dict(targets or {})
    known = [binary_attributes(f) for f in frames]
    union = sorted(set().union(*known)) if known else []
    shadow = sorted(set(targets) & set(union))
    if shadow:
        raise ValueError(f"targets {shadow} have the names of attributes in the data; rename the targets")
    resolved = [resolve_target(n, targets, union) for n in names]
    out = []
    for f, k in zip(frames, known):
        cols = [t.evaluate(attribute_frame(f, t.names)) if set(t.names) <= set(k) else np.full(len(f), np.nan)
                for t in resolved]
        out.append(np.stack(cols, 1) if cols else np.zeros((len(f), 0)))
    return out


# ---- what a model predicts ----------------------------------------------------------------------------------------
def predictor_attributes(predictor: Any) -> tuple[str, ...]:
    """A predictor's attribute outputs (`attr:NAME` keys of predict()): networks, devices and ensembles say so in
    `attributes`; peers have none."""
    return tuple(getattr(predictor, "attributes", ()))


def predictor_targets(predictor: Any) -> dict[str, str]:
    """The composite targets a predictor's attribute names stand for (name -> expression)."""
    return dict(getattr(predictor, "targets", {}))
