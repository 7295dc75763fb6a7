"""The real thing: `streamlit run dashboard/app.py` on generated artifacts, driven by Debian's chromium through
Playwright (never a downloaded browser). Screenshots of the Leaderboard, Generalization and the Compare page (after
uploading a face)
go to a temp folder (DASHBOARD_SCREENSHOTS=<dir> keeps them somewhere else)."""
from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (`apt-get install chromium`); this test never downloads a "
                "browser", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

from dashboard import demo  # noqa: E402

from conftest import REPO  # noqa: E402
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui")
    art = base / "artifacts"
    demo.write_demo_artifacts(art, n_images=150, n_models=8, perturbations={"blur": 2}, pert_images=15)
    port = free_port()
    env = {**os.environ, "ZOO_ARTIFACTS": str(art), "ZOO_CACHE": str(art / "cache"),
           "ZOO_SHARED_DATA": str(base / "none"), "PYTHONPATH": str(REPO)}
    env.pop("ZOO_BENCH_DB", None)
    log = open(base / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("streamlit did not start:\n" + (base / "streamlit.log").read_text()[-3000:])
            time.sleep(0.3)
        yield {"url": url, "base": base, "log": base / "streamlit.log"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and nothing else
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 2200})
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def shots(server) -> Path:
    d = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or server["base"] / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def settle(pg, timeout_ms: int = 60_000) -> None:
    """Wait until the script run is over: the running-status widget has come and gone, then a short quiet time."""
    pg.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    try:
        pg.wait_for_selector('[data-testid="stStatusWidget"]', state="attached", timeout=1500)
    except sync_api.TimeoutError:
        pass  # finished before we looked
    pg.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)
    pg.wait_for_timeout(600)
    pg.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)


def check_screenshot(pg, path: Path, min_std: float = 12.0) -> None:
    import cv2

    pg.screenshot(path=str(path), full_page=True)
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 500 and img.shape[1] > 800
    std = float(img.std())
    assert std > min_std, f"{path.name} looks blank (pixel std {std:.1f})"


def test_leaderboard_renders_in_chromium(page, server, shots):
    page.goto(server["url"] + "/", wait_until="domcontentloaded")
    settle(page)
    page.get_by_role("heading", name="Leaderboard").wait_for(timeout=30_000)
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)  # accuracy vs cost drawn by plotly.js
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("Accuracy vs cost").first.is_visible()
    check_screenshot(page, shots / "leaderboard.png")


def test_generalization_page_in_chromium(page, server, shots):
    page.goto(server["url"] + "/generalization", wait_until="domcontentloaded")
    settle(page)
    page.get_by_role("heading", name="Generalization").wait_for(timeout=30_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)  # the models x datasets matrix
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("gender accuracy: models").first.is_visible()
    check_screenshot(page, shots / "generalization.png")


def test_compare_page_in_chromium(page, server, shots):
    from PIL import Image
    from skimage.data import astronaut

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(astronaut()[20:260, 110:340])).save(buf, "JPEG", quality=92)
    page.goto(server["url"] + "/compare", wait_until="domcontentloaded")
    settle(page)
    page.get_by_role("heading", name="Compare a photo").wait_for(timeout=30_000)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        {"name": "face.jpg", "mimeType": "image/jpeg", "buffer": buf.getvalue()})
    page.locator(".js-plotly-plot").first.wait_for(timeout=90_000)  # the per-model prediction chart
    settle(page, 90_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    assert page.get_by_text("1 face(s) found").first.is_visible()
    check_screenshot(page, shots / "compare.png")
    assert "Traceback" not in server["log"].read_text()


def test_scatter_selection_filters_the_browser(page, server, shots):
    """Box-select points of the Errors page's predicted-vs-true scattergl, then open them in the Browser."""
    page.goto(server["url"] + "/errors", wait_until="domcontentloaded")
    settle(page)
    scatter = page.locator(".js-plotly-plot").filter(has_text="Predicted vs true")
    scatter.wait_for(timeout=30_000)
    scatter.scroll_into_view_if_needed()
    scatter.hover()
    scatter.locator('[data-attr="dragmode"][data-val="select"]').first.click()
    box = scatter.locator(".nsewdrag").first.bounding_box()
    x0, y0 = box["x"] + 2, box["y"] + 2
    x1, y1 = box["x"] + box["width"] * 0.6, box["y"] + box["height"] - 2
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()
    page.get_by_text("images selected").first.wait_for(timeout=30_000)
    settle(page)
    page.get_by_text("Open them in the Browser").click()
    page.get_by_role("heading", name="Browser").wait_for(timeout=30_000)
    settle(page)
    assert page.get_by_text("selected on the Errors page").first.is_visible()
    assert page.locator('[data-testid="stException"]').count() == 0
    check_screenshot(page, shots / "browser_selection.png")


def test_browser_thumbnails_keep_their_size_in_chromium(page, server, shots):
    """Issue 21 (B12): thumbnails are 160 px cells in aligned rows, and full screen shows an image at its own
    resolution instead of blowing a thumbnail up to the screen width (1,576 px)."""
    page.goto(server["url"] + "/browser", wait_until="domcontentloaded")
    settle(page)
    page.get_by_role("heading", name="Browser").wait_for(timeout=30_000)
    imgs = page.locator('[data-testid="stImageContainer"] img')
    imgs.first.wait_for(timeout=30_000)
    settle(page)
    boxes = [imgs.nth(k).bounding_box() for k in range(imgs.count())]
    assert len(boxes) > 6 and all(abs(b["width"] - 160) < 1 for b in boxes), boxes[:3]
    lefts = sorted({round(b["x"]) for b in boxes})
    per_line = sum(round(b["y"]) == round(boxes[0]["y"]) for b in boxes)
    assert len(lefts) == per_line > 1, "every line starts at the same left edges: a grid, no drift"
    first = imgs.first
    first.scroll_into_view_if_needed()
    first.hover()
    page.get_by_role("button", name="Fullscreen").first.click()
    page.wait_for_timeout(800)
    shown, natural = first.evaluate("e => [e.clientWidth, e.naturalWidth]")
    check_screenshot(page, shots / "browser_fullscreen.png", min_std=0.5)
    page.keyboard.press("Escape")
    # its own size, or the width of its one-line caption if that is wider; never the screen's
    assert shown < max(1.5 * natural, 400), f"full screen blows a {natural} px image up to {shown} px"
    assert page.locator('[data-testid="stException"]').count() == 0
