"""Headless Chromium (Debian package `chromium`) driven over the DevTools protocol, and a tiny
stdlib PNG reader to prove a screenshot is a real render (not a blank page)."""
from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,900", "--hide-scrollbars"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="slimeflow-chromium-")
        self.proc = subprocess.Popen(
            [chromium_path(), *FLAGS, f"--user-data-dir={self.profile}",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        end = time.time() + 30
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if time.time() > end or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank",
                                     method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            target = json.load(r)
        from websockets.sync.client import connect

        self.ws = connect(target["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self._id = 0
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True,
                        awaitPromise=True)
        return res.get("result", {}).get("value")

    def goto(self, url: str):
        self.call("Page.navigate", url=url)

    def wait_text(self, *needles, timeout=60.0) -> str:
        end = time.time() + timeout
        text = ""
        while time.time() < end:
            text = self.eval("document.body ? document.body.innerText : ''") or ""
            if all(n in text for n in needles):
                return text
            time.sleep(0.3)
        raise AssertionError(f"page never showed {needles!r}; it shows:\n{text[:2000]}")

    def wait_js(self, expr: str, timeout=30.0, what: str | None = None):
        """The value of a JS expression once it is truthy."""
        end = time.time() + timeout
        while time.time() < end:
            got = self.eval(f"(() => {{ try {{ return {expr}; }} catch (e) {{ return null; }} }})()")
            if got:
                return got
            time.sleep(0.3)
        text = self.eval("document.body ? document.body.innerText : ''") or ""
        raise AssertionError(f"page never had {what or expr}; it shows:\n{text[:2000]}")

    # what a user does: real mouse clicks and typed text (Input.* events, as from a person),
    # on elements found the way a person finds them (a button's text, a field's label)

    @staticmethod
    def button(label: str) -> str:
        """JS for the visible button whose text (or aria-label) is `label`."""
        return ("[...document.querySelectorAll('button, [role=menuitem]')].find(b => "
                f"(b.innerText.trim() === {json.dumps(label)} || "
                f"b.getAttribute('aria-label') === {json.dumps(label)}) && "
                "b.getClientRects().length && !b.disabled)")

    @staticmethod
    def field(label: str) -> str:
        """JS for the input or textarea of the form field labelled `label` (required fields'
        asterisk ignored)."""
        return ("(() => { const l = [...document.querySelectorAll('label')].find(l => "
                f"l.innerText.replace('*', '').trim() === {json.dumps(label)}); "
                "if (!l) return null; const own = document.getElementById(l.htmlFor); "
                "if (own && own.type !== 'hidden' && own.matches('input, textarea')) return own; "
                "let root = l.parentElement; const sel = 'input:not([type=hidden]), textarea'; "
                "while (root && !root.querySelector(sel)) root = root.parentElement; "
                "return root && root.querySelector(sel); })()")

    def click(self, element: str, timeout=60.0, what: str | None = None):
        """Wait for the element (a JS expression), scroll it into view and click its middle
        with the mouse."""
        box = self.wait_js(
            f"(() => {{ const e = {element}; if (!e) return null; "
            "e.scrollIntoView({block: 'center', inline: 'center'}); "
            "const r = e.getBoundingClientRect(); "
            "return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()",
            timeout, what or element)
        x, y = box
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def click_button(self, label: str, timeout=60.0):
        self.click(self.button(label), timeout, f"a {label!r} button")

    def fill(self, label: str, text: str, timeout=60.0):
        """Click into the field labelled `label`, select what is there and type `text`."""
        el = self.field(label)
        self.click(el, timeout, f"a field labelled {label!r}")
        self.eval(f"(() => {{ const e = {el}; e.select(); }})()")
        self.call("Input.insertText", text=text)

    def value(self, label: str):
        return self.eval(f"(() => {{ const e = {self.field(label)}; return e && e.value; }})()")

    def press(self, key: str, code: int):
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                      windowsVirtualKeyCode=code)

    def url(self) -> str:
        return self.eval("location.href") or ""

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)


def png_pixels(data: bytes):
    """(width, height, bytes per pixel, rows) of an 8-bit RGB/RGBA PNG, rows unfiltered."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    w, h, depth, color, _c, _f, interlace = ihdr
    assert depth == 8 and color in (2, 6) and interlace == 0, ihdr
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif f == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def render_stats(data: bytes) -> dict:
    """Size, distinct colours (sampled) and the share of rows that are not one flat colour."""
    w, h, bpp, rows = png_pixels(data)
    colours, busy = set(), 0
    for row in rows:
        px = {row[i:i + 3] for i in range(0, len(row), bpp * 4)}
        colours |= px
        busy += len(px) > 1
    return {"width": w, "height": h, "bytes": len(data), "colours": len(colours),
            "busy_rows": busy / h}
