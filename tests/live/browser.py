"""Headless Chromium driven over the DevTools protocol, for the report page's test: open a
file, collect what the page logged as an error, measure elements, take a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, List, Optional, Type

import pytest
import websocket  # websocket-client


def chromium() -> str:
    """The Chromium executable (fails, never skips, when the test bed has none)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium here: run `bash contrib/testbed/setup.sh` as root (it installs it)")


class Browser:
    """One headless Chromium with one page; a context manager."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="mwp-chromium-")
        self.proc = subprocess.Popen(
            [chromium(), "--headless=new", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
             "--window-size=1280,1600", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.close()
                pytest.fail(f"Chromium did not start: {err[-2000:]}")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            pages = [p for p in json.load(resp) if p.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60)
        self._ids = itertools.count(1)
        self.events: List[Dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> Dict[str, Any]:
        """Send one command; its result (events that arrive meanwhile are kept)."""
        mid = next(self._ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result") or {})
            self.events.append(msg)

    def open(self, path: Path) -> None:
        """Load a file and wait for its load event."""
        self.call("Page.navigate", url=path.resolve().as_uri())
        deadline = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            assert time.monotonic() < deadline, "the page did not load"
            self.events.append(json.loads(self.ws.recv()))

    def errors(self) -> List[str]:
        """What the page reported as errors: exceptions, console.error, error log entries."""
        found = []
        for e in self.events:
            method, p = e.get("method"), e.get("params") or {}
            if method == "Runtime.exceptionThrown":
                found.append(str(p.get("exceptionDetails")))
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                found.append(str(p.get("args")))
            elif method == "Log.entryAdded" and (p.get("entry") or {}).get("level") == "error":
                found.append(str(p["entry"].get("text")))
        return found

    def evaluate(self, expression: str) -> Any:
        """A JavaScript expression's value (JSON-able)."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(str(res["exceptionDetails"]))
        return (res.get("result") or {}).get("value")

    def screenshot(self, path: Path) -> None:
        """The whole page as a PNG."""
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        ws: Optional[websocket.WebSocket] = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.proc.kill()
        self.proc.wait(30)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self,
        _type: Optional[Type[BaseException]],
        _value: Optional[BaseException],
        _tb: Optional[TracebackType],
    ) -> None:
        self.close()
