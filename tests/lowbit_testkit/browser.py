"""Open an HTML page in headless Chromium (Debian's ``chromium``, installed by ``make test``):
the errors its console shows, its DOM after load, and a PNG screenshot.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ended by NUL bytes on file descriptors 3 and 4), standard library only. Its
``--enable-logging=stderr`` log was tried first and is not enough: console.error and
console.log print the same INFO line, and a failed resource load prints nothing
(docs/decisions.md, "HTML reports in a real browser").
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import html.parser
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = "chromium"
# Screenshots kept after the run for a person to look at (gitignored; tmp_path is removed
# after a few runs and is hard to find).
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
WINDOW = (1280, 1024)
TIMEOUT_S = 30.0
MAX_SCREENSHOT_HEIGHT = 8000  # px: a runaway page gives a tall PNG, not hundreds of MB

# Each flag is here for a reason: no GPU and no sandbox in CI containers (root cannot use
# chromium's sandbox), the same viewport and scale on every machine so screenshots compare,
# /tmp instead of /dev/shm (64 MB in Docker; Debian's wrapper means to add this flag when
# /dev/shm is small but its check breaks when /dev/shm has several mounts), and nothing that
# talks to the network or to a desktop session.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--force-device-scale-factor=1",
    "--hide-scrollbars",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--remote-debugging-pipe",
]

# Images that did not decode (a truncated data: URI logs no console error).
_BROKEN_IMAGES = (
    "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
    ".map(i => i.src.slice(0, 80))"
)
# Wait two frames, so what the load event's handlers changed is laid out and painted.
_TWO_FRAMES = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


class BrowserError(RuntimeError):
    """Chromium did not start, crashed, timed out, or could not open the page."""


@dataclass(frozen=True)
class RenderResult:
    """What the page did: ``console_errors`` (uncaught exceptions, console.error/assert, and
    every error the browser logged, failed resource loads included), ``dom`` (the document's
    outerHTML after load), ``broken_images`` (the first 80 characters of each <img> src that
    did not decode) and ``screenshot`` (the PNG written, the whole page)."""

    console_errors: list[str]
    dom: str
    broken_images: list[str]
    screenshot: Path


def chromium() -> str:
    """The chromium binary on PATH; fails the test, naming the fix, when there is none."""
    path = shutil.which(CHROMIUM)
    if path is None:
        pytest.fail(
            f"`{CHROMIUM}` not found on PATH: the HTML reports are checked in a real browser. "
            "Run `make test` (installs it), or `apt-get install -y --no-install-recommends "
            "chromium` (Debian) as root",
            pytrace=False,
        )
    return path


def render(html_path: Path, screenshot: Path, timeout: float = TIMEOUT_S) -> RenderResult:
    """Load ``html_path`` (a file) in headless Chromium, wait for its load event and two
    frames, and write a full-page PNG to ``screenshot``. Raises BrowserError when Chromium
    does not answer within ``timeout`` seconds (the whole run) or cannot open the page."""
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(html_path)
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="lowbit-chromium-") as profile:
        log = Path(profile) / "chromium-stderr.log"
        with _Chromium(binary, Path(profile) / "user-data", log, timeout) as browser:
            try:
                return _render(browser, html_path, Path(screenshot))
            except BrowserError as e:
                tail = _log_tail(log)
                msg = f"{e} (page {html_path}); chromium's stderr ends:\n{tail}"
                raise BrowserError(msg) from None


def _log_tail(log: Path) -> str:
    """The last lines of chromium's stderr, without the D-Bus noise of a machine with no
    desktop session."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return "\n".join(line for line in lines if "dbus" not in line.lower())[-2000:]


def _render(browser: _Chromium, html_path: Path, screenshot: Path) -> RenderResult:
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    attached = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})
    page = attached["sessionId"]
    browser.watch(page)
    # Before navigating, so an error thrown while the page parses is seen (Inspector: crashes).
    for domain in ("Runtime", "Log", "Page", "Inspector"):
        browser.call(f"{domain}.enable", session=page)
    nav = browser.call("Page.navigate", {"url": html_path.as_uri()}, session=page)
    if nav.get("errorText"):
        raise BrowserError(f"navigation failed: {nav['errorText']}")
    browser.wait_for("Page.loadEventFired", page)
    browser.evaluate(_TWO_FRAMES, page)
    dom = browser.evaluate("document.documentElement.outerHTML", page)
    broken = browser.evaluate(_BROKEN_IMAGES, page)
    size = browser.call("Page.getLayoutMetrics", session=page)["cssContentSize"]
    clip = {
        "x": 0,
        "y": 0,
        "width": max(WINDOW[0], int(size["width"])),
        "height": min(MAX_SCREENSHOT_HEIGHT, max(WINDOW[1], int(size["height"]))),
        "scale": 1,
    }
    shot = browser.call(
        "Page.captureScreenshot",
        {"format": "png", "clip": clip, "captureBeyondViewport": True},
        session=page,
    )
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    return RenderResult(list(browser.errors), dom, broken, screenshot)


class _Chromium:
    """One headless Chromium process and its DevTools pipe; records the console errors of
    the session passed to ``watch``."""

    def __init__(self, binary: str, user_data: Path, log: Path, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.errors: list[str] = []
        self.events: list[tuple[str, str | None]] = []
        self._session: str | None = None
        self._next_id = 0
        self._buffer = b""
        to_browser_r, self._out = os.pipe()
        self._in, from_browser_w = os.pipe()

        def to_fds_3_and_4() -> None:  # in the child, before exec: the pipe's fixed numbers
            r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)  # inheritable; every other descriptor Python opened is not
            os.dup2(w, 4)
            os.close(r)
            os.close(w)

        cmd = [binary, *FLAGS, f"--user-data-dir={user_data}", "about:blank"]
        with open(log, "wb") as stderr:
            try:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    close_fds=False,  # pass_fds would need 3 and 4 open here already
                    preexec_fn=to_fds_3_and_4,
                    start_new_session=True,  # its renderer and GPU processes go with it
                )
            finally:
                os.close(to_browser_r)
                os.close(from_browser_w)

    def __enter__(self) -> _Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc.poll() is None:
                self._send("Browser.close", {}, None)
                self.proc.wait(timeout=5)
        except (BrowserError, subprocess.TimeoutExpired):
            pass
        finally:
            # The whole group (its own session): helpers such as crashpad outlive a crash.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            os.close(self._out)
            os.close(self._in)

    def watch(self, session: str) -> None:
        self._session = session

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and return its result, recording the events read meanwhile."""
        msg_id = self._send(method, params or {}, session)
        while True:
            msg = self._read()
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise BrowserError(f"{method} failed: {msg['error']}")
                return msg["result"]
            self._event(msg)

    def evaluate(self, expression: str, session: str):
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        out = self.call("Runtime.evaluate", params, session=session)
        if "exceptionDetails" in out:
            raise BrowserError(f"evaluating {expression!r} threw {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait_for(self, method: str, session: str) -> None:
        while (method, session) not in self.events:
            self._event(self._read())

    def _send(self, method: str, params: dict, session: str | None) -> int:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        try:
            os.write(self._out, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            raise BrowserError(f"chromium exited (status {self.proc.poll()})") from None
        return self._next_id

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"chromium did not answer within {self.timeout:g} s")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise BrowserError(f"chromium exited (status {self.proc.poll()})")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _event(self, msg: dict) -> None:
        method, session = msg.get("method"), msg.get("sessionId")
        if method is None:
            return
        self.events.append((method, session))
        if session != self._session:
            return
        p = msg["params"]
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            what = d.get("exception", {}).get("description") or d.get("text", "")
            where = f"{d.get('url', '')}:{d.get('lineNumber', -1) + 1}"
            self.errors.append(f"{d.get('text', 'Uncaught')}: {what.splitlines()[0]} ({where})")
        elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            self.errors.append(f"console.{p['type']}: {args}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            entry = p["entry"]
            self.errors.append(f"{entry['text']} ({entry.get('url', '')})")
        elif method == "Inspector.targetCrashed":
            raise BrowserError("the page's renderer crashed")


def assert_report_renders(
    html_path: Path,
    screenshot: Path,
    *,
    min_tables: int = 1,
    min_plots: int = 1,
    keep_as: str | None = None,
) -> RenderResult:
    """Assert that a self-contained HTML report renders cleanly in Chromium: no console
    errors, every image decoded, at least ``min_tables`` <table> and ``min_plots`` <img>
    with a data: URI in the DOM after load, nothing loaded from outside the file, and a
    screenshot that is not one flat colour. The PNG is written to ``screenshot`` and, when
    ``keep_as`` names a file, copied to tests/artifacts/screenshots/."""
    result = render(html_path, screenshot)
    if keep_as is not None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.screenshot, ARTIFACTS / keep_as)
    assert result.console_errors == [], f"{html_path}: console errors {result.console_errors}"
    assert result.broken_images == [], f"{html_path}: images that did not decode"
    dom = _Dom()
    dom.feed(result.dom)
    assert dom.tables >= min_tables, f"{html_path}: {dom.tables} <table> after load"
    assert dom.data_images >= min_plots, f"{html_path}: {dom.data_images} data: <img>"
    assert dom.external == [], f"{html_path} is not self-contained: loads {dom.external}"
    from PIL import Image  # matplotlib's dependency: the reports need it anyway

    with Image.open(result.screenshot) as png:
        assert png.size[0] >= WINDOW[0] and png.size[1] >= WINDOW[1], png.size
        low, high = png.convert("L").getextrema()
        assert low < high, f"{result.screenshot} is one flat colour: nothing was painted"
    return result


_FETCHES_SRC = ("img", "script", "iframe", "embed", "video", "audio", "source", "track")


class _Dom(html.parser.HTMLParser):
    """Counts <table> and data: <img>, and lists the URLs a page would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = 0
        self.data_images = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tables += tag == "table"
        url = a.get("href") if tag == "link" else a.get("src") if tag in _FETCHES_SRC else None
        if tag == "img" and (url or "").startswith("data:"):
            self.data_images += 1
        elif url and not url.startswith("data:"):
            self.external.append(url[:80])
