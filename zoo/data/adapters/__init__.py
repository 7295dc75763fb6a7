"""Built-in dataset adapters; importing this module registers them."""
from zoo.data.adapters import appa, celebahq, fairface, fgnet, generic, utkface  # noqa: F401
