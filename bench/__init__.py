"""The benchmark: per-image predictions of every model under clean and perturbed conditions, stored in DuckDB.

    python -m bench run --models all --datasets utkface:test --perturb default
    python -m bench report

Modules: `store` (DuckDB file + atomic Parquet parts), `run` (the runner), `perturb` (perturbation registry),
`attributes` (per-image measurements), `metrics` (accuracy, groups with bootstrap CIs, fairness, uncertainty),
`report` (leaderboard), `readme` (the README's results table). External peers and device placement are the zoo's
(`zoo.peers`, `zoo.device`). Schema: `bench/SCHEMA.md`.
"""

# The bench's plugin registries, for `zoo.plugins.registries(*bench.PLUGIN_MODULES)`.
PLUGIN_MODULES = ("bench.perturb",)
