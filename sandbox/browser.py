"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the Prefect UI.

Used by scripts/screenshot_gate.py and tests/integration/test_ui_browser.py: no browser download, no Playwright;
`websockets` ships with prefect. Pages are driven with real mouse events since the UI's menus (Radix)
open on pointer events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from sandbox.servers import free_port


def chromium_binary() -> str | None:
    """The system Chromium, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """Headless Chromium driven over the DevTools protocol (websockets ships with prefect)."""

    def __init__(self, workdir: Path) -> None:
        binary = chromium_binary()
        if not binary:
            raise FileNotFoundError("chromium not found: apt-get install chromium")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1400,1000",
                f"--user-data-dir={workdir / 'chromium'}",
                f"--remote-debugging-port={self.port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.ws: Any = None
        self._id = 0

    async def connect(self) -> None:
        import httpx
        import websockets

        deadline = time.monotonic() + 30
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{self.port}/json", timeout=2).json()
                page = next(p for p in pages if p.get("type") == "page")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=1 << 26)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my_id = self._id
        await self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == my_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def wait_js(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.3)
        raise TimeoutError(f"timed out waiting for: {expression[:120]}")

    async def click(self, x: float, y: float) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1, pointerType="mouse"
            )
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> None:
        data = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# Center of the first visible element matching a predicate (scrolled into view: a click outside the
# viewport hits nothing), or null.
FIND = """
(() => {{
  const els = [...document.querySelectorAll({selector})].filter(e => {{
    const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0 && ({predicate});
  }});
  if (!els.length) return null;
  els[0].scrollIntoView({{block: 'center', inline: 'center'}});
  const r = els[0].getBoundingClientRect();
  return [r.x + r.width / 2, r.y + r.height / 2];
}})()
"""


async def open_page(browser: Chromium, url: str, *texts: str, timeout: float = 60) -> str:
    """Navigate and wait until the page's text holds every one of ``texts``; returns the page text."""
    await browser.call("Page.navigate", url=url)
    return await wait_text(browser, *texts, timeout=timeout)


async def wait_text(browser: Chromium, *texts: str, timeout: float = 60) -> str:
    """Wait until the page's visible text holds every one of ``texts``; returns the page text."""
    checks = " && ".join(f"t.includes({json.dumps(t)})" for t in texts) or "true"
    expression = f"(() => {{ const t = document.body ? document.body.innerText : ''; return ({checks}) ? t : null }})()"
    try:
        return await browser.wait_js(expression, timeout=timeout)
    except TimeoutError:
        seen = await browser.js("document.body ? document.body.innerText : ''")
        raise TimeoutError(f"page never showed {texts!r}; it shows: {str(seen)[:1500]!r}") from None


async def click_text(browser: Chromium, text: str, selector: str = "button", timeout: float = 30) -> None:
    """Click the first visible element matching ``selector`` whose text is exactly ``text``."""
    predicate = f"e.innerText.trim() === {json.dumps(text)}"
    where = await browser.wait_js(FIND.format(selector=json.dumps(selector), predicate=predicate), timeout=timeout)
    await browser.click(*where)


async def start_page(browser: Chromium, width: int = 1400, height: int = 1000) -> None:
    """Connect and set the viewport every screenshot uses."""
    await browser.connect()
    await browser.call("Page.enable")
    await browser.call("Runtime.enable")
    await browser.call(
        "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
    )
