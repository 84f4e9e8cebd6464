"""Screenshots of the MLflow UI (the README's pictures), headless Chromium:

    python tools/mlflow_screenshot.py headline docs/img/mlflow_runs.png          # a study's runs table
    python tools/mlflow_screenshot.py --run RUN_ID docs/img/mlflow_run_page.png  # a run's beat grid
    python tools/mlflow_screenshot.py --demo docs/img/mlflow_run_page.png        # the README's run page

the first two with `make ui` running; ``--demo`` trains a small fold-2 student of the committed
fold-2 teacher in a scratch store (a few minutes on 2 cores) and serves its own UI. The UI keeps its view (columns shown, expanded parent runs, sort) in
the browser's localStorage; for a runs table this script sets that view (trial names with test AUC
/ AP / F1 and best validation AUC, the study's parent run expanded, best test AUC first) and
reloads. A run's figures (``figures/*.html``, drawn in a sandboxed frame of the artifact view)
load plotly.js from cdn.plot.ly; the browser here answers that request with plotly's own copy of
the same file (the page's integrity hash checks it), so no network is needed. It speaks the Chrome
DevTools Protocol over a pipe (``--remote-debugging-pipe``), so it needs nothing but the Debian
package `chromium`.
"""
from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import plotly
from PIL import Image  # with matplotlib, which MLflow requires

from ablation import tracking

COLUMNS = ["metrics.`test_auc`", "metrics.`test_ap`", "metrics.`test_f1`", "metrics.`best_val_auc`"]
PLOTLY_CDN = "https://cdn.plot.ly/*"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
CLOSE_ASSISTANT = 'document.querySelector(\'[data-component-id="mlflow.assistant.chat_panel.close"]\')?.click()'
FIGURE_STATE = ("JSON.stringify({svgs: document.querySelectorAll('svg.main-svg').length, "
                "traces: document.querySelectorAll('.trace').length, "
                "legend: [...document.querySelectorAll('.legendtext')].map(e => e.textContent), "
                "title: document.querySelector('.gtitle')?.textContent || ''})")


class Browser:
    """Chromium driven through the DevTools pipe: fd 3 carries commands in, fd 4 replies and events
    out. Every frame (the page and the out-of-process frames it opens) is attached, has its
    requests for plotly.js answered locally, and is listed in `frames` (session id -> target info)."""

    def __init__(self, width: int = 1400, height: int = 1000):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        self._profile = tempfile.mkdtemp(prefix="mlflow-shot-")
        cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
               f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(cmd, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=lambda: (os.dup2(to_chrome_r, 3), os.dup2(from_chrome_w, 4)))
        self._id, self._buf, self._plotly = 0, b"", base64.b64encode(PLOTLY_JS.read_bytes()).decode()
        self.frames: dict[str, dict] = {}
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self._watch(self.session)

    def _send(self, method: str, session: str | None = None, **params) -> int:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _next(self, timeout: float | None = None) -> dict:
        """The next message (an event is handled first), or {} after `timeout` seconds without one."""
        while b"\0" not in self._buf:
            if not select.select([self._r], [], [], timeout)[0]:
                return {}
            self._buf += os.read(self._r, 1 << 20)
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self._on_event(msg["method"], msg["params"], msg.get("sessionId"))
        return msg

    def _on_event(self, method: str, params: dict, session: str | None) -> None:
        if method == "Fetch.requestPaused":  # only plotly.js from its CDN is intercepted
            self._send("Fetch.fulfillRequest", session, requestId=params["requestId"], responseCode=200,
                       responseHeaders=[{"name": "Content-Type", "value": "application/javascript"},
                                        {"name": "Access-Control-Allow-Origin", "value": "*"}], body=self._plotly)
        elif method == "Target.attachedToTarget":
            self.frames[params["sessionId"]] = params["targetInfo"]
            self._watch(params["sessionId"])
            self._send("Runtime.runIfWaitingForDebugger", params["sessionId"])
        elif method == "Target.detachedFromTarget":
            self.frames.pop(params["sessionId"], None)

    def _watch(self, session: str) -> None:
        self._send("Fetch.enable", session, patterns=[{"urlPattern": PLOTLY_CDN}])
        self._send("Target.setAutoAttach", session, autoAttach=True, waitForDebuggerOnStart=True, flatten=True)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        i = self._send(method, session, **params)
        while True:
            reply = self._next()
            if reply.get("id") == i:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait(self, seconds: float) -> None:
        """Let the pages run for `seconds`, answering their events."""
        end = time.time() + seconds
        while time.time() < end:
            self._next(timeout=max(0.0, end - time.time()))

    def page(self, method: str, **params) -> dict:
        return self.call(method, self.session, **params)

    def js(self, expression: str, session: str | None = None):
        reply = self.call("Runtime.evaluate", session or self.session, expression=expression, returnByValue=True)
        return reply.get("result", {}).get("value")

    def figures(self) -> list[dict]:
        """Per attached frame holding a Plotly figure: its svg and trace counts, legend and title."""
        states = [json.loads(self.js(FIGURE_STATE, s)) for s, info in self.frames.items() if info["type"] == "iframe"]
        return [f for f in states if f["svgs"]]

    def screenshot(self, out: str | Path) -> None:
        """The page as a PNG of at most 256 colours (a UI screenshot loses nothing visible; a third of the size)."""
        shot = Image.open(io.BytesIO(base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"])))
        shot.convert("RGB").quantize(256).save(out, optimize=True)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def view_state(parent_ids: list[str]) -> dict:
    """The experiment page's persisted view: columns, expanded parents, sort by test AUC."""
    return {"selectedColumns": COLUMNS, "runsExpanded": {i: True for i in parent_ids},
            "columnWidths": {"tags.`mlflow.runName`": 260},
            "orderByKey": "metrics.`test_auc`", "orderByAsc": False}


def artifact_link(run_id: str, artifact: str, base: str = tracking.UI_BASE) -> str:
    """The UI address of a run's artifact view with `artifact` open."""
    return f"{base}/#/experiments/{tracking.get_run(run_id).info.experiment_id}/runs/{run_id}/artifacts/{artifact}"


def open_artifact(b: Browser, run_id: str, artifact: str, base: str = tracking.UI_BASE,
                  timeout: float = 60) -> list[dict]:
    """Open a run's artifact in the UI and close the assistant panel; return `Browser.figures`
    once a figure is drawn ([] when none is within `timeout` seconds)."""
    b.page("Page.navigate", url="about:blank")  # the UI would take a mere change of its #path in place
    b.page("Page.navigate", url=artifact_link(run_id, artifact, base))
    end = time.time() + timeout
    while not (drawn := b.figures()) and time.time() < end:
        b.wait(1)
    b.js(CLOSE_ASSISTANT)
    b.wait(2)  # the panel's close animation; the figure's last redraw
    return b.figures() if drawn else []


def runs_table(study: str, out: str, base: str = tracking.UI_BASE) -> None:
    exp = tracking.experiment(study)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {study!r}")
    parents = [r.info.run_id for r in tracking.parent_runs(study)]
    url = tracking.ui_link(study, base)
    b = Browser()
    try:
        b.page("Page.navigate", url=url)
        b.wait(4)
        state = json.dumps(json.dumps(view_state(parents)))
        for scope in (exp.experiment_id, json.dumps([exp.experiment_id])):
            key = json.dumps(f"MLflowLocalStorage-1.1-ExperimentPage-{scope}-ReactComponentState")
            b.js(f"localStorage.setItem({key}, {state})")
        b.page("Page.reload")
        b.wait(8)
        b.js(CLOSE_ASSISTANT)
        b.wait(1)
        b.screenshot(out)
    finally:
        b.close()
    print(f"wrote {out} ({url})")


def run_page(run_id: str, out: str, artifact: str = f"{tracking.FIGURES}/beats.html", base: str = tracking.UI_BASE) -> None:
    b = Browser(1400, 1100)
    try:
        drawn = open_artifact(b, run_id, artifact, base)
        b.screenshot(out)
    finally:
        b.close()
    if not drawn:
        raise SystemExit(f"{artifact} of run {run_id}: no figure was drawn")
    print(f"wrote {out} ({artifact_link(run_id, artifact, base)})")


@contextmanager
def ui_server(store_uri: str, timeout: float = 180):
    """`mlflow ui` on a free port of 127.0.0.1 serving `store_uri`; yields its base address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mlflow ui on {base} did not start (exit {proc.poll()})")
                time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers
        proc.wait(timeout=30)


def demo(out: str) -> None:
    """The README's run page: a `recon` KD student (ndf 8, 2 epochs on 16,384 beats) of fold 2's
    committed teacher, trained in a scratch store, its beat grid through that store's UI."""
    from ablation.config import RunConfig, from_dict
    from ablation.run import execute
    cfg = from_dict(RunConfig, {"role": "student", "data": {"fold": 2, "train_subset": 16384, "val_subset": 2000},
                                "model": {"ndf": 8, "ngf": 8}, "train": {"epochs": 2},
                                "distill": {"kd": {"kind": "recon", "weight": 1.0}}}, src="demo")
    with tracking.scratch_store():
        run_id = execute(cfg).run_id
        with ui_server(tracking.current_uri()) as base:
            run_page(run_id, out, base=base)


if __name__ == "__main__":
    tracking.setup()
    if sys.argv[1] == "--run":
        run_page(*sys.argv[2:4])
    elif sys.argv[1] == "--demo":
        demo(sys.argv[2])
    else:
        runs_table(*sys.argv[1:3])
