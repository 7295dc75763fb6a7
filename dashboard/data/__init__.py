"""The dashboard's data layer, one module per concept (pages import these; they hold no SQL themselves):

* `db`: connections and locks on the predictions DB (through `bench.store.connect_read` / `is_lock_error`), the
  `batch()` of one script run, `DBBusy` / `DBUnavailable`, and `@query`: results cached on the DB's version, with the
  last good result served while a bench run holds the file;
* `stats`: 95 % confidence intervals (Wilson, normal, Hanley–McNeil) and summaries computed from query frames;
* `queries`: the SQL pieces and every query the pages run (`fn(db, ver, ...)` -> DataFrame);
* `registry`: reads of artifacts/runs/<id>/run.json through `zoo.runs.RunRecord` (no DB);
* `images`: where a dataset's images live, and the safe way to open one;
* `studies`: data studies (controlled factor comparisons, cross-dataset matrices, synthetic-set fidelity).
"""
