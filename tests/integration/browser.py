"""A headless Chromium driven over the DevTools protocol: pages tested as a person sees them.

Debian's ``chromium`` is started with a fresh profile; the test talks to its
page target over a WebSocket (aiohttp's client): navigate, read what is
rendered, click and type with real input events, and save a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import orjson

__all__ = ["Browser", "chromium_binary"]


def chromium_binary() -> str | None:
    """Debian's chromium (or another Chromium) on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page, closed (and its profile removed) on exit."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900) -> None:
        self.binary = binary
        self.width, self.height = width, height
        self._profile = Path(tempfile.mkdtemp(prefix="cachecast-chromium-"))
        self._proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        #: JavaScript errors the page threw (shown when a wait times out).
        self.errors: list[str] = []

    async def __aenter__(self) -> Self:
        self._proc = await asyncio.create_subprocess_exec(
            self.binary,
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-port=0",
            f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self._proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self._proc.returncode})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events in between are skipped)."""
        assert self._ws is not None
        ident = next(self._ids)
        await self._ws.send_str(
            orjson.dumps({"id": ident, "method": method, "params": params}).decode()
        )
        while True:
            message = await asyncio.wait_for(self._ws.receive(), 30)
            if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                raise RuntimeError(f"DevTools connection closed: {message.type}")
            data = orjson.loads(message.data)
            if data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.errors.append(str(details.get("exception", {}).get("description", details)))
            if data.get("id") == ident:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                result: dict[str, Any] = data.get("result", {})
                return result

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Until a JavaScript expression is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                shown = await self.evaluate("document.body ? document.body.innerText : ''")
                raise TimeoutError(
                    f"waited {timeout} s for {expression}; page errors: {self.errors};"
                    f" the page shows: {str(shown)[:600]!r}"
                )
            await asyncio.sleep(0.1)

    async def text(self, selector: str) -> str:
        """The rendered text of the first element matching ``selector``."""
        value = await self.evaluate(
            f"(document.querySelector({orjson.dumps(selector).decode()}) || {{}}).innerText"
        )
        return str(value) if value is not None else ""

    async def click(self, selector: str) -> None:
        """A mouse click at the middle of an element, as a person would click it."""
        box = await self.evaluate(
            "(() => { const e = document.querySelector("
            + orjson.dumps(selector).decode()
            + "); e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def type(self, selector: str, text: str) -> None:
        """Click into a field and type ``text``."""
        await self.click(selector)
        await self.send("Input.insertText", text=text)

    async def select(self, selector: str, value: str) -> None:
        """Choose an option of a select element (a change event, as the user's choice)."""
        await self.evaluate(
            f"(() => {{ const e = document.querySelector({orjson.dumps(selector).decode()});"
            f" e.value = {orjson.dumps(value).decode()};"
            " e.dispatchEvent(new Event('change', {bubbles: true})); })()"
        )

    async def screenshot(self, path: Path) -> Path:
        """Save the whole page as a PNG."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = await self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
        return path
