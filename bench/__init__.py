"""The benchmark: per-image predictions of every model under clean and perturbed conditions, stored in DuckDB.

    python -m bench run --models all --datasets utkface:test --perturb default
    python -m bench report

Modules: `store` (DuckDB file + atomic Parquet parts), `run` (the runner), `perturb` (perturbation registry),
`attributes` (per-image measurements), `peers` (external models), `metrics` (accuracy, groups with bootstrap CIs,
fairness, uncertainty), `report` (leaderboard), `device` (CUDA / CPU placement). Schema: `bench/SCHEMA.md`.
"""
