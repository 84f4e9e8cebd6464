"""The report page in headless Chromium: no JavaScript errors, every figure drawn, and a screenshot.

Needs the Debian package `chromium` (``apt-get install -y chromium``); skipped where it is absent,
except under CI (env var CI set), where its absence fails the test. The page is loaded from a
file:// URL with networking disabled, so a page that needed the network would show up as a
missing figure. Errors are caught twice: a hook injected into a copy of the page records
``error``/``unhandledrejection`` events and ``console.error`` calls on the <html> element (read back
from ``--dump-dom``), and Chromium's own console log (stderr) is scanned for "Uncaught".
"""
import os
import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ablation.paths import RUNS
from ablation.report.page import build_report, write_report
from support.report_samples import run_tiny_study, synthetic_report_data

SCREENSHOT = RUNS / "screenshot.png"  # tests write under the temporary runs/, never into the repo
WINDOW = (1400, 3000)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-unsafe-swiftshader",  # software WebGL for the parallel-coordinates plots
         "--hide-scrollbars", "--virtual-time-budget=20000"]
ALL_FIGURES = {"fig-auc", "fig-heatmap", "fig-parcoords", "fig-roc", "fig-pr", "fig-training", "fig-compression",
               "fig-optuna-history", "fig-optuna-importance", "fig-optuna-parcoords"}

ERROR_HOOK = """<script>(function () {
  var root = document.documentElement;
  function add(m) { root.setAttribute("data-js-errors", (root.getAttribute("data-js-errors") || "") + "\\n" + m); }
  window.addEventListener("error", function (e) {
    add("error: " + (e.message || (e.target && (e.target.src || e.target.href)) || e.type)); }, true);
  window.addEventListener("unhandledrejection", function (e) {
    add("unhandled rejection: " + (e.reason && (e.reason.stack || e.reason.message) || e.reason)); });
  var original = console.error;
  console.error = function () { add("console.error: " + Array.prototype.join.call(arguments, " "));
                                return original.apply(console, arguments); };
})();</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; CI must run `apt-get install -y chromium` (Debian package)")
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")


def _run_chromium(chromium: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=240)


class _FigureScan(HTMLParser):
    """Which divs are Plotly plots, and which contain a rendered <svg class="main-svg">."""

    def __init__(self):
        super().__init__()
        self.stack: list[str | None] = []
        self.plots: set[str] = set()
        self.drawn: set[str] = set()
        self.errors = ""
        self.text: list[str] = []  # text outside <script> and <style>
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        classes = (a.get("class") or "").split()
        if tag == "html":
            self.errors = a.get("data-js-errors") or ""
        if tag == "div":
            self.stack.append(a.get("id"))
            if "js-plotly-plot" in classes:
                self.plots.add(a.get("id"))
        elif tag == "svg" and "main-svg" in classes:
            self.drawn.update(i for i in self.stack if i)

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        if tag == "div" and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def _load(chromium: str, page: Path) -> tuple[_FigureScan, str, str]:
    """Load a copy of `page` with the error hook; return the scan of the rendered DOM, the DOM and stderr."""
    hooked = page.with_name(page.stem + ".hooked.html")
    text = page.read_text(encoding="utf-8")
    hooked.write_text(text.replace("<head>", "<head>\n" + ERROR_HOOK, 1), encoding="utf-8")
    out = _run_chromium(chromium, "--enable-logging=stderr", "--v=0", "--dump-dom", hooked.as_uri())
    assert out.returncode == 0, out.stderr[-3000:]
    scan = _FigureScan()
    scan.feed(out.stdout)
    return scan, out.stdout, out.stderr


def _check_page(chromium: str, page: Path, expected: set[str]) -> None:
    scan, dom, stderr = _load(chromium, page)
    assert "<h1>" in dom, "the page did not load"
    assert scan.errors.strip() == "", f"JavaScript errors in {page.name}:{scan.errors}"
    uncaught = [line for line in stderr.splitlines() if "Uncaught" in line]
    assert not uncaught, "\n".join(uncaught)
    assert scan.plots == expected, f"Plotly divs {sorted(scan.plots)}, expected {sorted(expected)}"
    assert scan.drawn >= expected, f"figures not drawn: {sorted(expected - scan.drawn)}"
    assert "WebGL is not supported" not in " ".join(scan.text), "a WebGL figure could not be drawn"


@pytest.fixture(scope="module")
def real_report(tmp_path_factory, tracking_store) -> Path:
    """A report of a real (tiny) MLflow study trained on synthetic beats: 2 variants x 3 seeds."""
    folder = tmp_path_factory.mktemp("browser-real")
    run_tiny_study(folder)
    return build_report("report_tiny", folder / "dash")


def test_hand_built_page_renders_every_figure_without_js_errors(chromium, tmp_path):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="tuned")
    study.optimize(lambda t: -(t.suggest_float("x", -2, 2) - 0.5) ** 2 - 0.01 * t.suggest_int("n", 1, 4), n_trials=10)
    page = write_report(synthetic_report_data(optuna_study=study), tmp_path)
    _check_page(chromium, page, ALL_FIGURES)


def test_real_report_renders_and_screenshot(chromium, real_report):
    _check_page(chromium, real_report, ALL_FIGURES - {"fig-heatmap"} - {f for f in ALL_FIGURES if "optuna" in f})
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    out = _run_chromium(chromium, f"--screenshot={SCREENSHOT}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                        real_report.as_uri())
    assert out.returncode == 0 and SCREENSHOT.exists(), out.stderr[-3000:]
    head = SCREENSHOT.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == WINDOW
    assert SCREENSHOT.stat().st_size > 50_000  # a blank page compresses to a few kB


def test_the_check_catches_errors_and_undrawn_figures(chromium, tmp_path):
    """The checker itself: a thrown error and a figure div that was never drawn are both reported."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><h1>x</h1>'
                    '<div id="fig-auc" class="plotly-graph-div js-plotly-plot"></div>'
                    '<script>throw new Error("boom");</script></body></html>')
    scan, _, _ = _load(chromium, page)
    assert "boom" in scan.errors and scan.plots == {"fig-auc"} and not scan.drawn
    with pytest.raises(AssertionError, match="JavaScript errors"):
        _check_page(chromium, page, {"fig-auc"})
