"""The dashboard served for real and driven headless: `python -m dashboard` in a process group of its own,
Debian's chromium through Playwright (never a downloaded browser). Used by the Chromium test
(tests/dashboard/test_dashboard_browser.py) and the timing benchmark (benchmarks/dashboard_timing.py); the app itself
never imports it. Playwright is imported by the callers, not here."""
from __future__ import annotations

import ast
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 900}  # the screen issue 21 asks every page to fit
CHARTS = '[data-testid="stPlotlyChart"], [data-testid="stVegaLiteChart"], [data-testid="stArrowVegaLiteChart"]'

# Settled: the script run is over (stApp's own run state, which Streamlit keeps for its e2e tests), the connection is
# up, no running-status widget, no spinner, and no skeleton (elements whose code is still loading are drawn as
# skeletons after the run ends). Optionally the page's title (h1) and a text in the main area are present, so a
# check made before the rerun has even started cannot pass.
SETTLED_JS = """(want) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.dataset.testScriptState !== 'notRunning' || app.dataset.testConnectionState !== 'CONNECTED')
    return false;
  if (document.querySelector('[data-testid="stStatusWidget"], [data-testid="stSpinner"], [data-testid="stSkeleton"]'))
    return false;
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main) return false;
  if (want.title && !Array.from(main.querySelectorAll('h1')).some(h => h.textContent.trim() === want.title))
    return false;
  return !want.text || main.innerText.includes(want.text);
}"""


def chromium() -> str | None:
    """Debian's chromium (`apt-get install chromium`), or None."""
    return shutil.which("chromium")


@dataclass(frozen=True)
class AppPage:
    script: str  # relative to dashboard/, e.g. "views/leaderboard.py"
    title: str
    default: bool = False

    @property
    def name(self) -> str:
        return Path(self.script).stem


def app_pages(app: Path = APP) -> list[AppPage]:
    """The pages `app.py` registers, in sidebar order: its `st.Page(VIEWS / "x.py", title=...)` calls, parsed rather
    than run (running app.py needs a Streamlit session), so a page added there is visited without a list to update."""
    calls = [n for n in ast.walk(ast.parse(app.read_text())) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "Page"]
    pages = []
    for call in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
        first = call.args[0] if call.args else None
        script = first.right.value if isinstance(first, ast.BinOp) and isinstance(first.right, ast.Constant) else \
            first.value if isinstance(first, ast.Constant) else None
        kw = {k.arg: k.value.value for k in call.keywords if isinstance(k.value, ast.Constant)}
        if not isinstance(script, str):
            raise TypeError(f"{app.name} line {call.lineno}: st.Page's script is not a literal path")
        script = f"views/{Path(script).name}" if "/" not in script else script
        pages.append(AppPage(script, kw.get("title") or Path(script).stem.replace("_", " ").capitalize(),
                             bool(kw.get("default", False))))
    return pages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(env: dict[str, str | None], log: Path, start_timeout: float = 180.0) -> Iterator[str]:
    """`python -m dashboard` (the README's command) on a free local port until the `with` ends; yields its URL once
    /healthz answers. `env` overrides the environment (None removes a variable). Output goes to `log`."""
    full = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dashboard", "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("streamlit did not start:\n" + Path(log).read_text()[-3000:])
                time.sleep(0.1)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # its own process group: the server and nothing else
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def settle(pg, title: str | None = None, text: str | None = None, timeout_s: float = 180.0,
           quiet_ms: int = 400) -> float:
    """Wait until the page is settled (SETTLED_JS) and stays so for `quiet_ms` (a widget's follow-up rerun starts
    within that); returns `time.perf_counter()` when the final settled stretch began, so a caller's timing excludes
    the quiet wait."""
    want = {"title": title, "text": text}
    deadline = time.monotonic() + timeout_s
    while True:
        left_ms = max(1000.0, (deadline - time.monotonic()) * 1000)
        pg.wait_for_function(SETTLED_JS, arg=want, timeout=left_ms, polling=50)
        at = time.perf_counter()
        pg.wait_for_timeout(quiet_ms)
        if pg.evaluate(SETTLED_JS, want):
            return at
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page never stayed settled ({want})")


def nav_titles(pg) -> list[str]:
    """The sidebar's page links, in order, after opening its "View N more" if there is one."""
    more = pg.locator('[data-testid="stSidebarNavViewButton"]')
    if more.count() and "more" in more.first.inner_text().lower():
        more.first.click()
        pg.locator('[data-testid="stSidebarNavViewButton"]', has_text="less").wait_for(timeout=10_000)
    links = pg.locator('[data-testid="stSidebarNavLink"]')
    return [links.nth(k).inner_text().split("\n")[-1].strip() for k in range(links.count())]


def click_page(pg, title: str) -> None:
    """Open a page from the sidebar (in the same session, as a user does; a URL would start a new session)."""
    titles = nav_titles(pg)
    if title not in titles:
        raise LookupError(f"no sidebar link {title!r}; the sidebar has {titles}")
    pg.locator('[data-testid="stSidebarNavLink"]').nth(titles.index(title)).click()


def full_page_screenshot(pg, path: Path) -> list[dict]:
    """A screenshot of the whole main area at the viewport's width. Streamlit scrolls inside `stMain`, not the
    document, so Playwright's full_page alone stops at the window: the window is made as tall as the content for the
    shot, then put back. Returns the boxes ({x, y, width, height}, screenshot pixels) of the charts drawn, hidden
    ones (closed expanders keep a layout box: checkVisibility, other tabs) left out."""
    size = pg.viewport_size or VIEWPORT
    height = size["height"]
    for _ in range(3):  # a taller window can change the content's height (full-height elements): measure again
        content = pg.evaluate('() => document.querySelector(\'[data-testid="stMain"]\').scrollHeight')
        if content <= height:
            break
        height = content
        pg.set_viewport_size({"width": size["width"], "height": height})
        pg.wait_for_timeout(400)  # relayout; plotly redraws on resize
    try:
        pg.screenshot(path=str(path), full_page=True)
        boxes = pg.evaluate("""(sel) => Array.from(document.querySelectorAll(sel)).filter(e => e.checkVisibility())
          .map(e => {
            const r = e.getBoundingClientRect();
            return {x: r.x, y: r.y, width: r.width, height: r.height, kind: e.dataset.testid,
                    title: (e.querySelector('.gtitle') || {}).textContent || ''};
          }).filter(b => b.width > 0 && b.height > 0)""", CHARTS)
    finally:
        if height != size["height"]:
            pg.set_viewport_size(size)
            pg.wait_for_timeout(200)
    return boxes


def horizontal_overflow(pg) -> dict:
    """Widths that show a horizontal scroll bar: the document's and the main area's (scrollWidth vs clientWidth), and
    the first shown table's right edge and its own grid scroller (a table wider than its column scrolls inside)."""
    return pg.evaluate("""() => {
      const doc = document.scrollingElement, main = document.querySelector('[data-testid="stMain"]');
      const out = {viewport: window.innerWidth, doc: [doc.scrollWidth, doc.clientWidth],
                   main: main ? [main.scrollWidth, main.clientWidth] : null, table: null};
      const t = Array.from(document.querySelectorAll('[data-testid="stMain"] [data-testid="stDataFrame"]'))
        .find(e => e.checkVisibility() && e.getBoundingClientRect().width > 0);  // shown: not in a closed expander
      if (t) {
        const r = t.getBoundingClientRect(), s = t.querySelector('.dvn-scroller');
        out.table = {left: r.left, right: r.right, scroll: s ? [s.scrollWidth, s.clientWidth] : null};
      }
      return out;
    }""")
