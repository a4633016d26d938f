"""The docs site checked as a reader sees it (issue 16): built, served over HTTP, opened in headless Chromium.

Slow (one strict mkdocs build and a browser). The browser is Debian's ``chromium`` package, which CI installs in
``.ci/run``; when it is missing the test fails and says how to install it, unless ``DENSECNN_SKIP_BROWSER=1`` asks
explicitly to skip it.

Chromium is driven with the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (NUL-terminated JSON on
file descriptors 3 and 4, as Puppeteer's ``pipe: true`` does): the standard library suffices, there is no port to
discover and no websocket client to depend on, and the protocol reports what ``--dump-dom`` cannot: whether each
image actually loaded (``naturalWidth``) and every console message and uncaught exception, as structured events
instead of log lines to parse from stderr.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import http.server
import json
import os
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.docs.test_site import REPO, build, nav_pages

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT = (1280, 900)
INSTALL_HINT = ("headless Chromium is needed for the docs browser check: `apt-get install -y --no-install-recommends "
                "chromium` (Debian/Ubuntu; .ci/run does this in CI), or set DENSECNN_SKIP_BROWSER=1 to skip it")


def find_browser() -> str:
    """The Chromium executable; fails (does not skip) when there is none, unless skipping was asked for."""
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    if os.environ.get("DENSECNN_SKIP_BROWSER") == "1":
        pytest.skip("DENSECNN_SKIP_BROWSER=1")
    pytest.fail(f"none of {', '.join(BROWSERS)} is on PATH: {INSTALL_HINT}")


def above_4(fd: int) -> int:
    """``fd`` moved to a descriptor above 4, so that putting the pipe on 3 and 4 in the child overwrites neither end."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return high


class CDPTimeout(AssertionError):
    """The browser did not answer or send an awaited event in time."""


class Browser:
    """Headless Chromium spoken to through the DevTools Protocol on a pipe (``--remote-debugging-pipe``).

    Events are kept in ``events`` as they arrive, so console messages sent while waiting for a reply are not lost.
    """

    def __init__(self, executable: str, profile: Path, timeout: float = 60.0):
        self.timeout = timeout
        self.events: list[dict] = []
        self._next_id = 0
        self._buffer = b""
        to_browser_r, self._to_browser = map(above_4, os.pipe())
        self._from_browser, from_browser_w = map(above_4, os.pipe())
        args = [f"--user-data-dir={profile}", "--headless=new", "--remote-debugging-pipe", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--hide-scrollbars", "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
                f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"]
        if os.geteuid() == 0:
            args.insert(0, "--no-sandbox")  # Chromium refuses to start its sandbox as root (CI containers)
        # The protocol expects its pipe on descriptors 3 (commands in) and 4 (replies out); bash puts it there
        # (dash cannot name descriptors above 9).
        self.process = subprocess.Popen(
            ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', executable, *args],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)

    def close(self) -> None:
        os.close(self._to_browser)  # Chromium exits when its command pipe closes
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stderr.close()
        os.close(self._from_browser)

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CDPTimeout("no message from Chromium in time")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise AssertionError(f"Chromium exited (code {self.process.poll()}): "
                                         f"{self.process.stderr.read().decode(errors='replace')[-2000:]}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Sends one command and returns its result; events that arrive meanwhile go to ``events``."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, session: str) -> dict:
        """Waits for the event ``method`` of ``session`` (one already received counts)."""
        deadline = time.monotonic() + self.timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)
            self.events.append(self._read_message(deadline))

    def open(self, url: str) -> str:
        """A new tab showing ``url``, loaded (its ``load`` event fired); returns its protocol session."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session)
        self.send("Emulation.setDeviceMetricsOverride", session, width=VIEWPORT[0], height=VIEWPORT[1],
                  deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str):
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self, session: str) -> list[str]:
        """Every console error, uncaught exception and browser-logged error (failed loads) of ``session``."""
        found = []
        for event in self.events:
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append("console." + params["type"] + ": " +
                             " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append("uncaught: " + details.get("exception", {}).get("description", details["text"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}".strip())
        return found


# Every figure in the page's content (not the theme's icons), with whether it rendered: an <img> decoded with a
# width (naturalWidth > 0, so a broken link fails), an inline <svg> laid out with a width.
FIGURES_JS = """
Array.from(document.querySelectorAll('article img, article svg')).filter(e => !e.closest('.twemoji, .md-icon'))
  .map(e => ({tag: e.tagName.toLowerCase(), src: e.currentSrc || e.getAttribute('src') || '',
              loaded: e.tagName === 'IMG' ? e.complete && e.naturalWidth > 0 : e.getBoundingClientRect().width > 0}))
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the request log would clutter the test output
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """``directory`` over HTTP on a free local port, from a thread (what ``python -m http.server`` does)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=directory))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def site_url(tmp_path_factory):
    """The strictly built site, served for the module's tests."""
    site = tmp_path_factory.mktemp("browser") / "site"
    result = build(REPO / "mkdocs.yml", site)
    assert result.returncode == 0, result.stdout + result.stderr
    with serve(site) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Browser(find_browser(), tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


def nav_titles(nav) -> dict[str, str]:
    """Each page file of a mkdocs ``nav`` with its title there (pages named without a title are left out)."""
    titles = {}
    for entry in nav:
        if isinstance(entry, dict):
            (title, value), = entry.items()
            titles.update(nav_titles(value) if isinstance(value, list) else {value: title})
    return titles


def browser_title(page: str) -> str:
    """The ``<title>`` mkdocs-material gives ``page``: the site name alone on the home page, else the page's nav
    title, " - ", the site name."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    if page == "index.md":
        return config["site_name"]
    return f"{nav_titles(config['nav'])[page]} - {config['site_name']}"


def tutorial_page() -> str:
    """The first tutorial page in the site's nav: a rendered tutorial if there is one, else the tutorials' page
    (the notebooks are linked from it, not rendered)."""
    pages = [p for p in nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]) if p.startswith("tutorials/")]
    assert pages, "mkdocs.yml's nav has no tutorials page"
    return next((p for p in pages if not p.endswith("index.md")), pages[0])


def page_url(site_url: str, page: str) -> str:
    """Where mkdocs serves ``page`` (directory URLs: ``a/b.md`` -> ``a/b/``, ``index.md`` -> ``/``)."""
    path = str(PurePosixPath(page).with_suffix("")).removesuffix("index").rstrip("/")
    return site_url + (path + "/" if path else "")


def screenshot(browser: Browser, session: str, path: Path) -> np.ndarray:
    """The viewport as a PNG at ``path``; returns its pixels."""
    path.write_bytes(base64.b64decode(browser.send("Page.captureScreenshot", session, format="png")["data"]))
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("page", ["index.md", tutorial_page()])
def test_page_renders_in_chromium_with_a_figure_and_no_console_errors(page, browser, site_url, tmp_path):
    url = page_url(site_url, page)
    session = browser.open(url)
    browser.evaluate(session, "document.fonts.ready.then(() => true)")  # the text is laid out in its fonts

    assert browser.evaluate(session, "document.title") == browser_title(page), url
    if page.endswith(".md"):  # the page's first heading is on screen, less its permalink "¶"
        heading = next(line for line in (REPO / "docs" / page).read_text().splitlines() if line.startswith("# "))
        heading_js = ("Array.from(document.querySelector('article h1').childNodes)"
                      ".filter(n => !n.classList?.contains('headerlink')).map(n => n.textContent).join('').trim()")
        assert browser.evaluate(session, heading_js) == heading[2:].strip(), url

    figures = browser.evaluate(session, FIGURES_JS)
    assert all(f["loaded"] for f in figures), f"{url}: a figure did not load: {figures}"
    assert figures, f"{url}: no figure in the page content"

    pixels = screenshot(browser, session, tmp_path / "screenshot.png")
    assert pixels.shape == (VIEWPORT[1], VIEWPORT[0], 3)
    # A rendered page, not a blank or one-colour canvas: text, the header bar and figures give many colours.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50

    assert browser.errors(session) == [], f"{url}: the browser logged errors"


def test_the_check_sees_a_broken_figure_a_console_error_and_an_exception(tmp_path, browser):
    # A page with one good and one missing image, a console.error and an uncaught exception: the check must report
    # exactly these, so a clean result above means a clean page.
    Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "index.html").write_text(
        "<!doctype html><title>probe</title><article><img src='good.png'><img src='missing.png'></article>"
        "<script>console.error('probe error'); throw new Error('probe exception')</script>")
    with serve(tmp_path) as url:
        session = browser.open(url)
        figures = browser.evaluate(session, FIGURES_JS)
        errors = browser.errors(session)
    assert [(Path(f["src"]).name, f["loaded"]) for f in figures] == [("good.png", True), ("missing.png", False)]
    assert len(errors) == 3, errors
    assert "console.error: probe error" in errors
    assert any(e.startswith("uncaught: Error: probe exception") for e in errors), errors
    assert any("404" in e and "missing.png" in e for e in errors), errors
