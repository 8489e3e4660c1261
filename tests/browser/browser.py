"""Headless Chromium over the DevTools protocol (a pipe: no extra package): open a page, wait for text,
run JavaScript, click, keep screenshots (`Page`); `check_page` opens an HTML file, collects console
errors and uncaught exceptions and checks that every embedded image decodes (the cluster test's report
check). Chromium is started as this machine needs it (--headless --no-sandbox --disable-gpu
--disable-background-networking ...)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import threading
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-pipe", "--window-size=1400,1000"]

# Every data: image embedded in the page (the report inlines its figures), decoded by the browser.
IMAGES_JS = r"""
(async () => {
  const html = document.documentElement.outerHTML;
  const re = /data:image\/(?:png|jpeg|svg\+xml)(?:;[^;,"'\s]*)*;base64,[A-Za-z0-9+\/=]+/g;
  const uris = [...new Set(html.match(re) || [])];
  const sizes = await Promise.all(uris.map(u => new Promise(ok => {
    const img = new Image();
    img.onload = () => ok(img.naturalWidth * img.naturalHeight);
    img.onerror = () => ok(0);
    img.src = u;
  })));
  return JSON.stringify({count: uris.length, failed: sizes.filter(s => !s).length,
                         png: uris.filter(u => u.startsWith("data:image/png")).length,
                         title: document.title, text: document.body ? document.body.innerText.length : 0});
})()
"""


class Chromium:
    def __init__(self, binary: str, profile_dir: Path, log: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds():  # the protocol pipe is fd 3 (commands in) and fd 4 (replies out)
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        with open(log, "ab") as fh:
            self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                                         preexec_fn=fds, close_fds=False, stdout=fh, stderr=fh,
                                         stdin=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._id, self.events, self._replies = 0, [], {}
        self._cond = threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        buf = b""
        while True:
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._id not in self._replies:
                if not self._cond.wait(timeout=max(deadline - time.monotonic(), 0.01)) \
                        and time.monotonic() > deadline:
                    raise TimeoutError(f"chromium did not answer {method} in {timeout} s")
            reply = self._replies.pop(self._id)
        if "error" in reply:
            raise RuntimeError(f"chromium {method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(e["method"] == method for e in self.events):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {method} from chromium in {timeout} s")
                self._cond.wait(timeout=1)

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._w)


class Page:
    """One tab of a fresh Chromium (its own profile under `out_dir`): `with Page(binary, out_dir) as page`."""

    def __init__(self, binary: str, out_dir: Path, width: int = 1400, height: int = 1000):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.browser = Chromium(binary, out_dir / "chromium-profile", out_dir / "chromium.log")
        try:
            target = self.browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.browser.close()
            raise

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc) -> None:
        self.browser.close()

    def send(self, method: str, params: dict | None = None, timeout: float = 60):
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def js(self, expression: str, timeout: float = 60):
        """The value of a JavaScript expression (awaited when it is a promise); a thrown error raises."""
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"javascript failed: {reply['exceptionDetails']}")
        return reply.get("result", {}).get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, expression: str, timeout: float = 180, what: str = "") -> object:
        """Poll a JavaScript expression until it is truthy; its value (TimeoutError naming `what`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.js(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what or expression}; the page says:\n"
                                   f"{self.text()[:2000]}")
            time.sleep(0.5)

    def wait_for_text(self, needle: str, timeout: float = 180) -> None:
        self.wait_for(f"document.body && document.body.innerText.includes({json.dumps(needle)})", timeout,
                      what=repr(needle))

    def frames(self) -> list[dict]:
        """Every frame of the page (the top one first): {'id', 'url', ...}."""
        def walk(node):
            yield node["frame"]
            for child in node.get("childFrames", []):
                yield from walk(child)

        return list(walk(self.send("Page.getFrameTree")["frameTree"]))

    def frame_js(self, url_prefix: str, expression: str):
        """Evaluate in the first frame whose URL starts with `url_prefix` (an iframe of another origin,
        e.g. the report's data: previews, which the page's own scripts may not read)."""
        frame = next((f for f in self.frames() if f["url"].startswith(url_prefix)), None)
        if frame is None:
            raise LookupError(f"no frame at {url_prefix!r}: {[f['url'][:60] for f in self.frames()]}")
        world = self.send("Page.createIsolatedWorld", {"frameId": frame["id"]})["executionContextId"]
        reply = self.send("Runtime.evaluate", {"expression": expression, "contextId": world, "returnByValue": True})
        return reply.get("result", {}).get("value")

    def screenshot(self, name: str) -> Path:
        shot = self.send("Page.captureScreenshot", {"format": "png"})
        path = self.out_dir / name
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def errors(self, since: int = 0) -> list[str]:
        """Console errors, uncaught exceptions and failed loads of this tab, from event number `since` on."""
        return [_describe(e) for e in self.browser.events[since:]
                if _is_error(e) and e.get("sessionId") == self.session]

    def allow_downloads(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.browser.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder),
                                                          "eventsEnabled": True})

    def wait_download(self, timeout: float = 60) -> dict:
        """The params of the next completed download (Browser.downloadProgress, state completed)."""
        deadline, seen = time.monotonic() + timeout, len(self.browser.events)
        while time.monotonic() < deadline:
            begun = {}
            for event in self.browser.events[seen:]:
                if event["method"] == "Browser.downloadWillBegin":
                    begun = event["params"]
                elif event["method"] == "Browser.downloadProgress" and event["params"].get("state") == "completed":
                    return {**begun, **event["params"]}
            time.sleep(0.2)
        raise TimeoutError(f"no download completed in {timeout} s")


def check_page(binary: str, html: Path, out_dir: Path) -> dict:
    """{'errors': [...], 'images': {...}, 'screenshot': path}: errors are console errors, uncaught
    exceptions and failed loads."""
    out_dir.mkdir(parents=True, exist_ok=True)
    browser = Chromium(binary, out_dir / "chromium-profile", out_dir / "chromium.log")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired", timeout=120)
        time.sleep(3)  # the report renders with React after the load event
        result = browser.send("Runtime.evaluate", {"expression": IMAGES_JS, "awaitPromise": True,
                                                   "returnByValue": True}, session=session, timeout=120)
        images = json.loads(result["result"]["value"])
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        screenshot = out_dir / "report.png"
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        errors = [_describe(e) for e in browser.events if _is_error(e)]
    finally:
        browser.close()
    return {"errors": errors, "images": images, "screenshot": screenshot}


def _is_error(event: dict) -> bool:
    p = event.get("params", {})
    if event["method"] == "Runtime.exceptionThrown":
        return True
    if event["method"] == "Runtime.consoleAPICalled":
        return p.get("type") in ("error", "assert")
    if event["method"] == "Log.entryAdded":
        return p.get("entry", {}).get("level") == "error"
    return False


def _describe(event: dict) -> str:
    p = event["params"]
    if event["method"] == "Runtime.exceptionThrown":
        d = p["exceptionDetails"]
        return f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}"[:500]
    if event["method"] == "Runtime.consoleAPICalled":
        return "console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])[:500]
    e = p["entry"]
    return f"log {e.get('source')}: {e.get('text')} {e.get('url', '')}"[:500]
