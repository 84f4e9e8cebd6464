"""Screenshot of a study's runs table in the MLflow UI (the README's picture), headless Chromium.

    python tools/mlflow_screenshot.py headline docs/img/mlflow_runs.png   # with `make ui` running

The UI keeps its view (columns shown, expanded parent runs, sort) in the browser's localStorage;
this script sets that view (trial names with test AUC / AP / F1 and best validation AUC, the
study's parent run expanded, best test AUC first), reloads the page and saves a PNG. It speaks the
Chrome DevTools Protocol over a pipe (``--remote-debugging-pipe``), so it needs nothing but the
Debian package `chromium`.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time

from ablation import tracking

COLUMNS = ["metrics.`test_auc`", "metrics.`test_ap`", "metrics.`test_f1`", "metrics.`best_val_auc`"]


class Browser:
    """Chromium driven through the DevTools pipe: fd 3 carries commands in, fd 4 replies out."""

    def __init__(self, width: int = 1400, height: int = 1000):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        self._profile = tempfile.mkdtemp(prefix="mlflow-shot-")
        cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
               f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(cmd, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=lambda: (os.dup2(to_chrome_r, 3), os.dup2(from_chrome_w, 4)))
        self._id, self._buf = 0, b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                self._buf += os.read(self._r, 1 << 20)
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def page(self, method: str, **params) -> dict:
        return self.call(method, self.session, **params)

    def js(self, expression: str):
        return self.page("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    def close(self) -> None:
        self.proc.kill()


def view_state(parent_ids: list[str]) -> dict:
    """The experiment page's persisted view: columns, expanded parents, sort by test AUC."""
    return {"selectedColumns": COLUMNS, "runsExpanded": {i: True for i in parent_ids},
            "columnWidths": {"tags.`mlflow.runName`": 260},
            "orderByKey": "metrics.`test_auc`", "orderByAsc": False}


def main(study: str, out: str, base: str = tracking.UI_BASE) -> None:
    tracking.setup()
    exp = tracking.experiment(study)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {study!r}")
    parents = [r.info.run_id for r in tracking.parent_runs(study)]
    url = tracking.ui_link(study, base)
    b = Browser()
    try:
        b.page("Page.navigate", url=url)
        time.sleep(4)
        state = json.dumps(json.dumps(view_state(parents)))
        for scope in (exp.experiment_id, json.dumps([exp.experiment_id])):
            key = json.dumps(f"MLflowLocalStorage-1.1-ExperimentPage-{scope}-ReactComponentState")
            b.js(f"localStorage.setItem({key}, {state})")
        b.page("Page.reload")
        time.sleep(8)
        b.js('document.querySelector(\'[data-component-id="mlflow.assistant.chat_panel.close"]\')?.click()')
        time.sleep(1)
        shot = b.page("Page.captureScreenshot", format="png")["data"]
    finally:
        b.close()
    with open(out, "wb") as f:
        f.write(base64.b64decode(shot))
    print(f"wrote {out} ({url})")


if __name__ == "__main__":
    main(*sys.argv[1:3])
