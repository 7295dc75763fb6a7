"""Built-in dataset adapters; importing this module registers them."""
from zoo.data.adapters import utkface  # noqa: F401
