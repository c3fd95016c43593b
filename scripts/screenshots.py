#!/usr/bin/env python
"""Screenshots of what a researcher sees in the MLflow UI after a run, for docs/img/.

    python scripts/screenshots.py [--store DIR] [--run-id RUN] [--out docs/img]

Reads top to bottom: copy the store (DIR/mlflow.db and DIR/mlruns; a copy, which also shows that a moved store
serves its own files) -> serve the copy with `mlflow ui` on 127.0.0.1 (a free port) -> open it in headless
Chromium (Debian's `chromium`) through the DevTools protocol, in MLflow's model-training view, with the
headline columns picked in the runs table -> screenshot the runs table, the run page, its model-metrics tab
and the registered model's page -> stop both, remove the copy.

The run defaults to the latest top-level run of the store that has fine-tune or export runs under it.
Only the standard library, `aiohttp` (installed with Ray) and the `chromium` binary are needed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evoplast.cli import UsageError, run_main  # noqa: E402

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")
HEADLINE_COLUMNS = ("summary/recommended_loss", "summary/evolved_loss", "summary/best_baseline_loss")
WIDTH, HEIGHT = 1440, 900          # the first screen of a laptop


def find_chromium() -> str | None:
    """The Chromium binary (``$CHROMIUM``, or ``chromium`` / ``chromium-browser`` / ``google-chrome`` on the PATH)."""
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, seconds: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {seconds:.0f} s")


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, chromium: str, profile: Path):
        self.proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                      "--remote-debugging-port=0", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start (no DevToolsActivePort)")
            time.sleep(0.2)
        self.port = int(port_file.read_text().split()[0])
        self.ws = self.session = None
        self._id = 0

    async def connect(self):
        import aiohttp

        _wait_http(f"http://127.0.0.1:{self.port}/json/version", 20)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list") as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.call("Page.enable")
        await self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                        mobile=False)

    async def call(self, method: str, **params):
        self._id += 1
        mine = self._id
        await self.ws.send_json({"id": mine, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=60)
            if msg.get("id") == mine:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str):
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")

    async def goto(self, url: str, wait_for: str = "", seconds: float = 60) -> bool:
        """Open ``url``; wait until the page's text contains ``wait_for`` (then a moment for charts to draw)."""
        await self.call("Page.navigate", url=url)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            text = await self.js("document.body ? document.body.innerText : ''") or ""
            if wait_for and wait_for in text or not wait_for and len(text) > 200:
                await asyncio.sleep(2.5)
                return True
        print(f"screenshots.py: {url} did not show {wait_for!r} in {seconds:.0f} s", file=sys.stderr)
        return False

    async def screenshot(self, path: Path) -> Path:
        r = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(r["data"]))
        return path

    async def close(self):
        if self.session is not None:
            await self.ws.close()
            await self.session.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pick_run(client, run_id: str | None):
    """``(experiment id, the run)``: ``run_id``, or the latest top-level run with nested runs under it."""
    if run_id:
        run = client.get_run(run_id)
        return run.info.experiment_id, run
    experiments = [e.experiment_id for e in client.search_experiments()]
    for run in client.search_runs(experiments, order_by=["attributes.start_time DESC"]):
        if "mlflow.parentRunId" in run.data.tags:
            continue
        children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        if children:
            return run.info.experiment_id, run
    raise UsageError("the store has no run with nested runs; run `python scripts/evolve.py` first")


async def shoot(base: str, chromium: str, profile: Path, exp: str, run, model: tuple[str, str] | None,
                out: Path) -> dict:
    """The four screenshots; returns what the run page's first screen shows (for the test)."""
    browser = Browser(chromium, profile)
    shots, seen = [], {}
    try:
        await browser.connect()
        # MLflow 3 opens in its GenAI view with its Assistant panel open: the model-training view, no panel;
        # the runs table (its state is kept in localStorage once the page has been shown): the summary columns
        # first, the run's nested runs expanded
        ml = "workflowType=machine_learning"
        await browser.goto(f"{base}/#/experiments/{exp}/runs?{ml}", "Run Name")
        await browser.goto(f"{base}/health", "OK", seconds=10)      # the app saves its state as it leaves
        await browser.js("localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));"
                         "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                         "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                         f"localStorage.setItem('MLflowLocalStorage-1.1-ExperimentView-{exp}-expandRows', 'true')")
        await _pick_columns(browser, run.info.run_id)
        ok = await browser.goto(f"{base}/#/experiments/{exp}/runs?{ml}", "recommended_loss")
        shots.append(await browser.screenshot(out / "mlflow-runs.png"))
        seen["runs_table_columns"] = ok
        # the run page: description first
        run_url = f"{base}/#/experiments/{exp}/runs/{run.info.run_id}"
        first_line = run.data.tags.get("mlflow.note.content", "").splitlines()[0].replace("**", "")
        await browser.goto(f"{run_url}?{ml}", first_line[:20])
        shots.append(await browser.screenshot(out / "mlflow-run.png"))
        seen["first_screen"] = await browser.js(f"""(() => {{
            const text = [];
            const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            while (walk.nextNode()) {{
              const r = walk.currentNode.parentElement.getBoundingClientRect();
              if (r.bottom > 0 && r.top < {HEIGHT} && r.width > 0 && r.height > 0) text.push(walk.currentNode.textContent);
            }}
            return text.join(' ');
        }})()""")
        seen["first_line"] = first_line
        # the model-metrics tab: the sections in order (summary/, heldout/, search/, speed/)
        await browser.goto(f"{run_url}/model-metrics?{ml}", "heldout")
        await asyncio.sleep(3)
        shots.append(await browser.screenshot(out / "mlflow-metrics.png"))
        seen["sections"] = await browser.js("[...document.body.innerText.matchAll(/^(summary|heldout|learning|search|"
                                            "speed|meta)\\s*\\(\\d+\\)/gm)].map(m => m[1])")
        if model is not None:
            name, version = model
            await browser.goto(f"{base}/#/models/{name}/versions/{version}?{ml}", "Source Run")
            shots.append(await browser.screenshot(out / "mlflow-model.png"))
    finally:
        await browser.close()
    seen["files"] = [str(p) for p in shots]
    return seen


async def _pick_columns(browser: Browser, run_id: str) -> None:
    """The runs table's columns: the summary metrics and the tag that says what a run is (the UI keeps its
    choice in localStorage, ``MLflowLocalStorage-1.1-ExperimentPage-["<id>"]-ReactComponentState``); the run's
    nested runs expanded."""
    keys = json.loads(await browser.js("JSON.stringify(Object.keys(localStorage))") or "[]")
    columns = [f"metrics.`{c}`" for c in HEADLINE_COLUMNS] + ["tags.`outer`"]
    for key in keys:
        raw = await browser.js(f"localStorage.getItem({json.dumps(key)})")
        try:
            state = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if isinstance(state, dict) and "selectedColumns" in state:
            state["selectedColumns"] = columns
            state["runsExpanded"] = {**state.get("runsExpanded", {}), run_id: True}
            await browser.js(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))})")


def serve_and_shoot(store: Path, run_id: str | None, out: Path, chromium: str) -> dict:
    """Copy ``store``, serve the copy with ``mlflow ui``, take the screenshots into ``out``."""
    from mlflow.tracking import MlflowClient

    if not (store / "mlflow.db").is_file():
        raise UsageError(f"no MLflow store in {str(store)!r} (no mlflow.db); give --store DIR")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="evoplast-ui-") as tmp:
        copy = Path(tmp) / "store"
        copy.mkdir()
        shutil.copy2(store / "mlflow.db", copy / "mlflow.db")
        if (store / "mlruns").is_dir():
            shutil.copytree(store / "mlruns", copy / "mlruns")
        here = os.getcwd()
        os.chdir(copy)
        try:
            # absolute: MLflow keeps one engine per URI string in a process, wherever "mlflow.db" was first opened
            client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
            exp, run = pick_run(client, run_id)
            versions = client.search_model_versions(f"tags.evolution_run = '{run.info.run_id}'")
            model = (versions[0].name, versions[0].version) if versions else None
        finally:
            os.chdir(here)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db",
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=copy,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_http(f"http://127.0.0.1:{port}/health", 120, server)
            profile = Path(tmp) / "chromium-profile"
            profile.mkdir()
            seen = asyncio.run(shoot(f"http://127.0.0.1:{port}", chromium, profile, exp, run, model, out))
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
    seen["run_id"] = run.info.run_id
    return seen


def shows_first_line(seen: dict) -> bool:
    """Whether the text on the run page's first screen has the description's first line up to its number
    (``Use: the fine-tuned rule (ES then BPTT), held-out query MSE 0.618``), spacing aside."""
    def squash(text: str) -> str:
        return "".join((text or "").split())

    head = seen["first_line"].split(" (lower is better", 1)[0]
    return squash(head) in squash(seen.get("first_screen"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="screenshots.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=".", help="folder with mlflow.db and mlruns/ (default: here)")
    p.add_argument("--run-id", default=None, help="the run to show (default: the latest with nested runs)")
    p.add_argument("--out", default="docs/img", help="folder for the PNGs (default docs/img)")
    args = p.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        raise UsageError("no Chromium found: `apt-get install -y chromium` (or set $CHROMIUM)")
    seen = serve_and_shoot(Path(args.store), args.run_id, Path(args.out), chromium)
    for f in seen["files"]:
        print(f"wrote {f}")
    print(f"run {seen['run_id']}: the run page's first screen {'shows' if shows_first_line(seen) else 'does NOT show'} "
          f"\"{seen['first_line'][:80]}\"; chart sections in order: {', '.join(seen['sections'] or [])}")
    return 0


if __name__ == "__main__":
    run_main(main)
