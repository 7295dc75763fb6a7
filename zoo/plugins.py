"""One registry type for every plugin table (backbones, formulations, readers, perturbations, peers, optimizers, ...).

    BACKBONES = Registry("backbone")

    @BACKBONES.register("seed_cnn")          # a decorator: registers and returns the function or class
    def seed_cnn(**kw): ...

    AUGMENTS.register("light", AugmentPreset(flip=0.5))   # or a call, for a value that is not a function
    READERS.register("fgnet", framing="detect")(read_fgnet)  # keyword arguments are the entry's metadata

    BACKBONES.get("resnet18")     # UnknownName (a ValueError) listing the known names when it is not there
    BACKBONES.names("efficientnet*")  # sorted names matching an fnmatch pattern
    READERS.meta("fgnet")         # {"framing": "detect"}

Every registry behaves alike: a second entry under a taken name is a `DuplicateName`, an unknown name is an
`UnknownName` whose message lists the known ones (both are ValueErrors, which the CLIs report as one line). Adding a
plugin is one decorated function (or class) in the module that owns the table, plus its test.
"""
from __future__ import annotations

import fnmatch
import importlib
from typing import Any, Callable, Iterator

# The modules of `zoo` that define registries: importing them all makes `registries()` complete for the zoo. Packages
# built on it (the bench's perturbations: `bench.PLUGIN_MODULES`) pass their own modules to `registries(...)`; zoo
# never imports them.
PLUGIN_MODULES = ("zoo.backbones", "zoo.formulations", "zoo.gender", "zoo.augment", "zoo.balance", "zoo.optim",
                  "zoo.data.readers", "zoo.faces", "zoo.peers")

_UNSET = object()
_TRACKED: dict[str, "Registry"] = {}


class DuplicateName(ValueError):
    """A second entry under a name a registry already holds."""


class UnknownName(ValueError):
    """A name a registry does not hold; the message lists the known ones."""


class Registry:
    """Name -> object, in registration order, with per-entry metadata.

    `populate`: called once before the first lookup or listing (e.g. importing the modules whose decorators fill
    the table). `track=False` keeps a registry out of `registries()` (throwaway ones in tests)."""

    def __init__(self, kind: str, *, populate: Callable[[], Any] | None = None, track: bool = True):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._populate, self._populated = populate, populate is None
        if track:
            if kind in _TRACKED:
                raise DuplicateName(f"a registry of {kind}s already exists")
            _TRACKED[kind] = self

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    def _load(self) -> None:
        if not self._populated:
            self._populated = True  # before the call: the modules it imports register into this table
            try:
                self._populate()
            except BaseException:
                self._populated = False
                raise

    # -------------------------------------------------------------------------------------------------- writing
    def register(self, name: str, obj: Any = _UNSET, /, **meta: Any) -> Any:
        """`@reg.register(name, **meta)` decorates a function or class; `reg.register(name, obj, **meta)` adds `obj`
        now. Either way returns the object registered."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if obj is not _UNSET:
            return self._add(name, obj, meta)
        if name in self._entries:  # fail at the decorator line, before the body is even defined
            raise self._duplicate(name)
        return lambda o: self._add(name, o, meta)

    def _add(self, name: str, obj: Any, meta: dict[str, Any]) -> Any:
        if name in self._entries:
            raise self._duplicate(name)
        self._entries[name], self._meta[name] = obj, dict(meta)
        return obj

    def _duplicate(self, name: str) -> DuplicateName:
        old = self._entries[name]
        what = getattr(old, "__qualname__", None) or type(old).__name__
        return DuplicateName(f"{self.kind} {name!r} is already registered ({what})")

    def unregister(self, name: str) -> Any:
        """Remove an entry (a temporary registration); returns it."""
        self.get(name)
        self._meta.pop(name)
        return self._entries.pop(name)

    # -------------------------------------------------------------------------------------------------- reading
    def get(self, name: str) -> Any:
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name" from a hand-written config
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}") from None

    __getitem__ = get

    def meta(self, name: str) -> dict[str, Any]:
        """The keyword arguments the entry was registered with (a copy)."""
        self.get(name)
        return dict(self._meta[name])

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching the fnmatch `pattern`, sorted."""
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        self._load()
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        """Names in registration order."""
        self._load()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def items(self) -> list[tuple[str, Any]]:
        self._load()
        return list(self._entries.items())


def registries(*modules: str) -> list[Registry]:
    """Every registry the zoo defines, plus those of `modules` (e.g. `*bench.PLUGIN_MODULES`), importing the modules
    that hold them; by kind."""
    for m in (*PLUGIN_MODULES, *modules):
        importlib.import_module(m)
    return [_TRACKED[k] for k in sorted(_TRACKED)]
