"""`snakemake --report` of the shared tiny run, opened in Debian's headless Chromium through chromedriver (W3C
WebDriver over HTTP, no driver package): every figure and table loads, the menu leads to a category, a model and
an open figure with its caption, and no link is broken.

With CIRCUITFLOW_SCREENSHOTS=<folder> the test also saves screenshots of the report there (docs/report/ holds the
committed ones: ``CIRCUITFLOW_SCREENSHOTS=docs/report pytest tests/integration/test_report_browser.py``)."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import TINY, snakemake

OPS = ["add", "mul"]  # tests/configs/tiny.yaml
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000"]
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")


class Browser:
    """A Chromium session driven through chromedriver's W3C WebDriver endpoints."""

    def __init__(self, port: int, profile: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        options = {"binary": str(CHROMIUM), "args": [*FLAGS, f"--user-data-dir={profile}"]}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)["value"]

    def command(self, method: str, path: str, body: dict | None = None) -> object:
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def js(self, script: str, *args: object) -> object:
        """Run ``script`` (a function body; ``return`` a value, or a Promise the driver waits for)."""
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait(self, script: str, *args: object, timeout: float = 30) -> object:
        """Poll ``script`` until it returns something truthy; that value."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(script, *args)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"browser: timed out waiting for: {script}")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))

    def close(self) -> None:
        self.command("DELETE", "")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def report(tiny_workdir, tmp_path_factory) -> Path:
    """The Snakemake report of the tiny run, written outside the run's folder (the run stays as it is)."""
    path = tmp_path_factory.mktemp("report") / "report.html"
    done = snakemake(tiny_workdir, TINY, "--report", str(path))
    assert done.returncode == 0, done.stderr[-4000:]
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Browser]:
    port = _free_port()
    driver = subprocess.Popen([str(CHROMEDRIVER), f"--port={port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # chromedriver listens within a second or two
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        session = Browser(port, tmp_path_factory.mktemp("chromium-profile"))
        yield session
        session.close()
    finally:
        driver.terminate()
        driver.wait(timeout=30)


# Clicks the menu entry, table row button or link whose text is ``arguments[0]`` (the first visible one).
CLICK = """
const wanted = arguments[0];
const link = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === wanted && a.offsetParent);
if (!link) return false;
link.click();
return true;
"""
# Clicks the eye (view) or info button in the results row whose first cell reads ``arguments[0]`` and whose other
# cells include ``arguments[1]`` (or any row when null); button 0 is the eye, 1 the info.
CLICK_ROW = """
const [first, other, button] = arguments;
const row = [...document.querySelectorAll('tbody tr')].find(tr => {
  const cells = [...tr.querySelectorAll('td')].map(td => td.textContent.trim());
  return cells[0] === first && (other === null || cells.includes(other));
});
if (!row) return false;
row.querySelectorAll('a')[button].click();
return true;
"""
SHOWN_IMAGE = """
const img = document.querySelector('img[src^="data:image/png"]');
return img && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null;
"""


def _open(browser: Browser, report: Path) -> None:
    browser.open(report.as_uri())
    browser.wait("return typeof app !== 'undefined' && document.querySelectorAll('a').length > 5")


def _shoot(browser: Browser, name: str) -> None:
    folder = os.environ.get("CIRCUITFLOW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        time.sleep(0.5)  # let the view finish drawing
        browser.screenshot(Path(folder) / f"{name}.png")


def test_every_figure_and_table_loads(browser, report, tiny_workdir):
    _open(browser, report)
    items = browser.js("return Object.entries(results).map(([p, r]) => [p, r.mime_type, r.data_uri.length])")
    figures = sorted(p.relative_to(tiny_workdir).as_posix() for p in (tiny_workdir / "results/figures").rglob("*.png"))
    assert sorted(p for p, mime, _ in items if mime == "image/png") == figures and len(figures) > 20
    # every embedded figure decodes to a real image (as the viewer's <img> would)
    sizes = browser.js("""
        return Promise.all(Object.values(results).filter(r => r.mime_type === 'image/png').map(r =>
            new Promise(done => { const img = new Image(); img.onload = () => done(img.naturalWidth);
                                  img.onerror = () => done(0); img.src = r.data_uri; })));""")
    assert len(sizes) == len(figures) and min(sizes) > 100
    # the headline tables and the provenance are HTML pages holding tables
    tables = browser.js("""
        return Object.entries(results).filter(([p, r]) => r.mime_type === 'text/html').map(([p, r]) => {
            const page = new DOMParser().parseFromString(
                new TextDecoder().decode(Uint8Array.from(atob(r.data_uri.split(',')[1]), c => c.charCodeAt(0))),
                'text/html');
            return [p, page.querySelectorAll('table').length, page.body.textContent];
        });""")
    assert sorted(p for p, _, _ in tables) == [f"results/tables/{name}.html" for name in (
        "accuracy", "circuit_cpr", "feature_circuits", "heuristic_neurons", "paper_circuits", "provenance")]
    assert all(count >= 1 for _, count, _ in tables), tables
    provenance = next(text for p, _, text in tables if p.endswith("provenance.html"))
    assert "snakemake" in provenance and "step300" in provenance  # package versions; the revision of toy-lora


def test_navigation_to_a_figure_and_its_caption(browser, report):
    _open(browser, report)
    assert "circuitflow finds and explains" in browser.js("return document.body.textContent")
    _shoot(browser, "start")
    categories = browser.js("return Object.keys(categories).sort()")
    assert categories == ["1 Headline tables", "2 Models and accuracy", "3 Circuits (EAP, EAP-IG)", "4 Localization",
                          "5 Heuristic neurons", "6 Feature circuits", "7 Provenance"]
    # a category with several models leads to a model, then to its figures, listed by their labels
    assert browser.js(CLICK, "2 Models and accuracy")
    browser.wait("return [...document.querySelectorAll('a')].some(a => a.textContent.trim() === 'all models')")
    assert browser.js(CLICK, "toy")
    labels = browser.wait("""const cells = [...document.querySelectorAll('tbody tr td:first-child')];
                              return cells.length && cells.map(td => td.textContent.trim())""")
    assert labels == ["accuracy across checkpoints", "training curve"]
    assert browser.js(CLICK_ROW, "training curve", None, 0)
    assert browser.wait(SHOWN_IMAGE)
    _shoot(browser, "category")
    # back through the breadcrumbs to a category with one model: it opens on that model's figures
    assert browser.js(CLICK, "Results")
    assert browser.wait(CLICK, "4 Localization")
    browser.wait("return document.querySelectorAll('tbody tr').length > 0")
    header = browser.js("return [...document.querySelectorAll('thead th')].map(th => th.textContent.trim())")
    assert header[:2] == ["figure", "operator"]  # labels, not file names
    assert browser.js("return document.querySelectorAll('tbody tr').length") == 4 * len(OPS) + 2
    assert browser.js(CLICK_ROW, "IE map", "mul", 0)
    width, height = browser.wait(SHOWN_IMAGE)
    assert width > 300 and height > 100
    assert browser.js(CLICK_ROW, "IE map", "mul", 1)  # its info: the caption names model and operator
    caption = browser.wait("return document.body.textContent.includes('Description') && document.body.textContent")
    assert "toy, mul: IE map (paper eq. 1)" in caption
    _shoot(browser, "figure")


def test_tables_open_and_no_link_is_broken(browser, report):
    _open(browser, report)
    assert browser.js(CLICK, "1 Headline tables")
    browser.wait("return document.querySelectorAll('tbody tr').length === 5")  # tables of make_report
    assert browser.js(CLICK_ROW, "circuit CPR per method and level", None, 0)
    assert browser.wait("const f = document.querySelector('iframe[src^=\"data:text/html\"]'); return f && f.src")
    _shoot(browser, "table")
    # links: captions and the description link to results and categories (javascript:), the rest are buttons
    # ('#') or embedded data; none points at a file that is not there
    hrefs = browser.js("""
        const all = [...Object.values(results).map(r => r.caption), workflow_desc].join('');
        const page = new DOMParser().parseFromString(all, 'text/html');
        return [...page.querySelectorAll('a'), ...document.querySelectorAll('a')].map(a => a.getAttribute('href'));""")
    targets = [h for h in hrefs if h not in ("#", None) and not h.startswith("data:")]
    assert targets and all(h.startswith("javascript:app.show") for h in targets), targets
    for href in set(targets):  # each opens what it names, without an error
        errors = browser.js("""
            window.__errors = []; window.onerror = m => { window.__errors.push(m); };
            try { eval(decodeURIComponent(arguments[0].slice('javascript:'.length))); }
            catch (e) { return [String(e)]; }
            return window.__errors;""", href)
        assert errors == [], (href, errors)


def test_circuit_figures_carry_their_cpr(browser, report):
    _open(browser, report)
    assert browser.js(CLICK, "3 Circuits (EAP, EAP-IG)")
    rows = browser.wait("""const rows = [...document.querySelectorAll('tbody tr')];
        return rows.length && rows.map(tr => [...tr.querySelectorAll('td')].slice(0, 4).map(td => td.textContent));""")
    header = browser.js("return [...document.querySelectorAll('thead th')].map(th => th.textContent.trim())")
    # operator first: a later label with two values (two operators) would become a toggle over an incomplete grid
    assert header[:4] == ["operator", "figure", "method", "CPR"]
    rows = [[figure, op, method, cpr] for op, figure, method, cpr in rows]
    methods = ["EAP", "EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted", "exact"]
    drawn = "EAP-IG-inputs"  # the method also drawn at node and neuron level, and the position-aware default
    assert sorted(r[:3] for r in rows) == sorted([["circuit graph", op, m] for op in OPS for m in methods]
                                                 + [["circuit graph", op, drawn] for op in OPS for _ in range(2)]
                                                 + [["position circuit", op, drawn] for op in OPS]
                                                 + [[figure, op, "all"] for op in OPS
                                                    for figure in ("faithfulness", "position faithfulness")])
    for figure, _, method, cpr in rows:  # the best method's CPR, or the method's own
        assert re.fullmatch(r"\d\.\d{3}" + (r" \(.+\)" if method == "all" else ""), cpr), (figure, method, cpr)
    assert browser.js(CLICK_ROW, "add", "EAP-IG-inputs", 0)
    assert browser.wait(SHOWN_IMAGE)
    _shoot(browser, "circuits")
