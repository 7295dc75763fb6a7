"""`python -m dashboard`: the agezoo dashboard, with the photo page's models loading from the moment it starts.

    python -m dashboard                          # http://localhost:8501, reads ZOO_ARTIFACTS (default artifacts/)
    python -m dashboard --server.port 8600       # any option of `streamlit run`

The same app as `streamlit run dashboard/app.py`. The difference: Streamlit runs nothing of the app before a browser
connects, so under `streamlit run` the model pool (a process of its own loading torch and the headline networks)
starts only with the first page; here it starts before the server, and a photo uploaded right after start finds it
(nearly) ready. The first start of a fresh clone also exports those networks to ONNX in the background, so later
starts load them without building their backbones in torch (dashboard.predict.runtime).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


def _export(model_ids: list[str]) -> None:
    """Export each network into the runtime cache (the background process `_report_loaded` starts); one that cannot
    be exported is reported and leaves the others exported."""
    from zoo.export import cached_onnx

    for m in model_ids:
        try:
            cached_onnx(m)
        except Exception as e:  # noqa: BLE001 (it keeps running eager; the log says why)
            print(f"agezoo: {m} not exported ({e})", file=sys.stderr)


def _report_loaded(pool) -> None:
    """Say when the photo page's models are loaded; then export, in a background process at the lowest CPU
    priority, those that ran eager for want of an ONNX export, so the next start loads them about twice as fast
    (dashboard.predict.runtime)."""
    pool.wait()
    p = pool.progress()
    print(f"agezoo: {len(p.models)} models for \"Compare a photo\" loaded in {p.seconds:.1f} s", file=sys.stderr,
          flush=True)
    todo = pool.unexported()
    if todo:
        print(f"agezoo: exporting {len(todo)} of them to ONNX in the background, once, for faster starts",
              file=sys.stderr, flush=True)
        code = "import sys; from dashboard.__main__ import _export; _export(sys.argv[1:])"
        subprocess.Popen([sys.executable, "-c", code, *todo], cwd=APP.parent.parent, preexec_fn=lambda: os.nice(19))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(args):
        print(__doc__.strip() + "\n\nOptions: `streamlit run --help`.")
        return 0
    from dashboard import predict
    from zoo.runs import registry_version

    pool = predict.app_pool(registry_version())  # the model process starts first; app.py finds it (same version)
    # Streamlit (with pandas, numpy, plotly) imported before another thread runs here: two threads importing one
    # package's mutually importing modules at once can see one of them half initialised (seen with pandas).
    from streamlit.web import cli

    threading.Thread(target=_report_loaded, args=(pool,), name="model-pool-report", daemon=True).start()
    sys.argv = ["streamlit", "run", str(APP), *args]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
