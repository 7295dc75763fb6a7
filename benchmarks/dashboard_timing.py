"""How fast does the dashboard answer in a real browser? Issue 21's targets, measured in Chromium.

    python benchmarks/dashboard_timing.py                           # the shipped artifacts (artifacts/)
    python benchmarks/dashboard_timing.py --artifacts DIR --photos 3 --screenshots /tmp/agezoo-shots

Runs `python -m dashboard` (dashboard/headless.py: Debian's chromium through Playwright, 1,400 x 900)
twice, each on a freshly started server:

1. Pages. The first tab opened once the server answers its health check (empty caches: the "first tab after server
   start"), then a second fresh tab, both until the default page has settled; then, in that second tab, every page of
   app.py from the sidebar (first visit, no target) and every page again (revisit).
2. Photos. A tab on "Compare a photo"; skimage's astronaut, saved as a temp JPEG, is uploaded the moment the uploader
   shows (the model pool is still loading: the worst case), then --photos more photos (other crops, so nothing is
   cached) with the default model set.

Settled: the script run is over, no running-status widget, spinner or element still loading, and the page's title
(and for a photo, its size caption) shown; see dashboard.headless.SETTLED_JS. Prints one table with the targets and
PASS / FAIL per row, and the layout at 1,400 px per page (horizontal scroll of the page and of its first table).
Exit status 1 when a row fails. Measure on a quiet machine: every number is wall time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from playwright.sync_api import Error as BrowserError

from dashboard import headless

TARGETS = {"first": 3.0, "revisit": 1.5, "first photo": 4.0, "later photo": 1.5}  # seconds, issue 21 acceptance 2
FAILED = (BrowserError, TimeoutError, LookupError)  # a page that never settles, a missing link
COMPARE = "compare"  # the photo page's script name in app.py
CROPS = [(20, 260, 110, 340), (0, 300, 90, 360), (10, 280, 100, 350), (30, 250, 120, 330), (5, 290, 95, 355),
         (15, 270, 105, 345)]  # astronaut crops around the face, each a different size (its caption tells them apart)


def write_photos(folder: Path, n: int) -> list[tuple[Path, str]]:
    """n JPEGs of the astronaut and the caption text the Compare page shows for each ("JPEG, W x H px")."""
    import numpy as np
    from PIL import Image
    from skimage.data import astronaut

    img = astronaut()
    out = []
    for k in range(n):
        y0, y1, x0, x1 = CROPS[k % len(CROPS)]
        crop = np.ascontiguousarray(img[y0:y1, x0 + k // len(CROPS):x1])
        if k % 2:
            crop = np.ascontiguousarray(crop[:, ::-1])  # mirrored: another image to the models
        path = folder / f"photo{k}.jpg"
        Image.fromarray(crop).save(path, "JPEG", quality=92)
        out.append((path, f"JPEG, {crop.shape[1]} x {crop.shape[0]} px"))
    return out


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float | None, float | None, str]] = []

    def add(self, what: str, seconds: float | None, target: float | None = None, note: str = "") -> None:
        self.rows.append((what, seconds, target, note))
        s = "failed" if seconds is None else f"{seconds:.2f} s"
        print(f"  {what}: {s}" + (f" ({note})" if note else ""), file=sys.stderr, flush=True)

    def failed(self) -> bool:
        return any(t is not None and (s is None or s > t) for _, s, t, _ in self.rows)

    def print(self) -> None:
        w = max(len(r[0]) for r in self.rows)
        print(f"\n{'measurement':<{w}}  {'seconds':>8}  {'target':>8}  result  note")
        print("-" * (w + 40))
        for what, s, t, note in self.rows:
            res = "-" if t is None else ("PASS" if s is not None and s <= t else "FAIL")
            sec = "error" if s is None else f"{s:.2f}"
            tgt = "-" if t is None else f"<= {t:.1f}"
            print(f"{what:<{w}}  {sec:>8}  {tgt:>8}  {res:<6}  {note}")


def timed_page(pg, title: str, timeout_s: float) -> float:
    t0 = time.perf_counter()
    headless.click_page(pg, title)
    return headless.settle(pg, title, timeout_s=timeout_s) - t0


def exceptions(pg) -> int:
    return pg.locator('[data-testid="stMain"] [data-testid="stException"]').count()


def pages_run(browser, env: dict, tmp: Path, table: Table, layout: list, shots: Path | None,
              timeout_s: float) -> None:
    pages = headless.app_pages()
    default = next(p.title for p in pages if p.default)
    t_start = time.perf_counter()
    with headless.serve(env, tmp / "pages.log") as url:
        table.add("server start to health check (python -m dashboard)", time.perf_counter() - t_start)
        for which in ("first tab after server start", "second fresh tab"):
            pg = browser.new_page(viewport=headless.VIEWPORT)
            t0 = time.perf_counter()
            pg.goto(url + "/", wait_until="commit")
            t = headless.settle(pg, default, timeout_s=timeout_s) - t0
            # Issue 21: the first page within 3 s on a warm server; the first tab after start is reported
            table.add(f"first page ({default}), {which}", t, TARGETS["first"] if which == "second fresh tab" else None)
            if which == "first tab after server start":
                pg.close()
        failed: list[str] = []
        for p in pages:  # first visits: every page's cold queries; no target, but the layout is measured here
            try:
                t = timed_page(pg, p.title, timeout_s)
            except FAILED as e:  # one page that never settles must not hide the others' numbers
                table.add(f"first visit: {p.title}", None, note=f"{type(e).__name__}: {str(e)[:80]}")
                failed.append(p.title)
                continue
            wide = headless.horizontal_overflow(pg)
            if shots:
                headless.full_page_screenshot(pg, shots / f"{p.name}.png")
            layout.append((p.title, wide, exceptions(pg)))
            table.add(f"first visit: {p.title}", t, note="exception shown" if exceptions(pg) else "")
        for p in pages:
            if p.title in failed:
                table.add(f"revisit: {p.title}", None, TARGETS["revisit"], "its first visit failed")
                continue
            try:
                table.add(f"revisit: {p.title}", timed_page(pg, p.title, timeout_s), TARGETS["revisit"])
            except FAILED as e:
                table.add(f"revisit: {p.title}", None, TARGETS["revisit"], f"{type(e).__name__}: {str(e)[:80]}")
        pg.close()


def photos_run(browser, env: dict, tmp: Path, table: Table, n_later: int, shots: Path | None,
               timeout_s: float) -> None:
    compare = next(p for p in headless.app_pages() if p.name == COMPARE)
    photos = write_photos(tmp, 1 + n_later)
    with headless.serve(env, tmp / "photos.log") as url:
        pg = browser.new_page(viewport=headless.VIEWPORT)
        t0 = time.perf_counter()
        pg.goto(f"{url}/{compare.name}", wait_until="commit")
        uploader = pg.locator('[data-testid="stFileUploaderDropzoneInput"]')
        uploader.wait_for(state="attached", timeout=timeout_s * 1000)
        table.add("Compare page: uploader shown after server start (no wait for the models)",
                  time.perf_counter() - t0)
        later = []
        for k, (path, caption) in enumerate(photos):
            t0 = time.perf_counter()
            uploader.set_input_files(str(path))
            try:
                t = headless.settle(pg, compare.title, text=caption, timeout_s=timeout_s) - t0
            except FAILED as e:
                t, note = None, f"{type(e).__name__}: {str(e)[:80]}"
            else:
                main = pg.locator('[data-testid="stMain"]')
                found = main.get_by_text("face(s) found").count() > 0
                note = caption + ("" if found else ", NO RESULT") + (", exception shown" if exceptions(pg) else "")
            if k == 0:
                table.add("photo uploaded right after server start", t, TARGETS["first photo"], note)
            else:
                table.add(f"later photo {k}", t, TARGETS["later photo"], note)
                later.append(t)
        if later and all(t is not None for t in later):
            table.add("later photos, median", statistics.median(later), TARGETS["later photo"])
        if shots:
            headless.full_page_screenshot(pg, shots / f"{compare.name}_photo.png")
        pg.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, default=REPO / "artifacts",
                    help="the artifacts folder the dashboard reads (ZOO_ARTIFACTS; default: the shipped artifacts/)")
    ap.add_argument("--photos", type=int, default=3, help="photos after the first (default 3)")
    ap.add_argument("--screenshots", type=Path, help="keep a full-page screenshot of every page (and of the last "
                    "photo's answer) here")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds one page or photo may take to settle")
    ap.add_argument("--skip-photos", action="store_true")
    args = ap.parse_args(argv)
    if headless.chromium() is None:
        print("error: Debian's chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    if not (args.artifacts / "bench.duckdb").is_file():
        print(f"error: no predictions DB at {args.artifacts / 'bench.duckdb'}", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    env = {"ZOO_ARTIFACTS": str(args.artifacts.resolve()), "ZOO_BENCH_DB": None}
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    table, layout = Table(), []
    with tempfile.TemporaryDirectory(prefix="agezoo-timing-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=headless.chromium(), args=headless.CHROMIUM_ARGS)
        try:
            pages_run(browser, env, Path(tmp), table, layout, args.screenshots, args.timeout)
            if not args.skip_photos:
                photos_run(browser, env, Path(tmp), table, args.photos, args.screenshots, args.timeout)
        finally:
            browser.close()
            table.print()
    print(f"\nLayout at {headless.VIEWPORT['width']} x {headless.VIEWPORT['height']} (scrollWidth / clientWidth):")
    for title, wide, exc in layout:
        t = wide["table"]
        tab = "no table" if not t else (f"first table {t['scroll'][0]}/{t['scroll'][1]}" if t["scroll"] else
                                        "first table (no grid)")
        fits = wide["main"][0] <= wide["main"][1] and (not t or not t["scroll"] or t["scroll"][0] <= t["scroll"][1] + 1)
        print(f"  {title:<18} page {wide['main'][0]}/{wide['main'][1]} · {tab} · {'fits' if fits else 'SCROLLS'}"
              + (f" · {exc} exception(s)" if exc else ""))
    if args.screenshots:
        print(f"Screenshots: {args.screenshots}")
    return 1 if table.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
