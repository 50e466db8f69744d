"""Headless Chromium driven through the DevTools protocol: open a page from disk, record every request.

Chromium is the Debian package (``apt-get install chromium``; ``.ci/run`` installs it). Name
resolution is disabled (``--host-resolver-rules``), so a request for another machine fails;
it is recorded all the same (``Network.requestWillBeSent``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import websocket

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)

_INSPECT = """(() => ({
  text: document.body.innerText,
  images: document.images.length,
  broken: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 60)),
  links: Array.from(document.links).map(a => a.href),
}))()"""


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, profile: Path):
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
             "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.calls, self.events = 0, []
        self.call("Page.enable")
        self.call("Network.enable")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)

    def _receive(self) -> dict:
        message = json.loads(self.socket.recv())
        if "method" in message:
            self.events.append(message)
        return message

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result."""
        self.calls += 1
        self.socket.send(json.dumps(dict(id=self.calls, method=method, params=params)))
        while True:
            message = self._receive()
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, path: Path) -> dict:
        """Load ``path`` and return its text, image count, broken images, links and every requested URL."""
        self.events.clear()
        self.call("Page.navigate", url=path.resolve().as_uri())
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            self._receive()
        page = self.call("Runtime.evaluate", expression=_INSPECT, returnByValue=True)["result"]["value"]
        page["requests"] = [e["params"]["request"]["url"] for e in self.events
                            if e["method"] == "Network.requestWillBeSent"]
        return page
