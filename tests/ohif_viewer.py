"""OHIF Viewer (the prebuilt dist of npm's @ohif/app) on loopback, reading a DICOMweb server, in headless Chromium.

OHIF is served at / with its data source pointed at our own origin, and
/dicom-web/ is proxied to the PACS: one origin, so no CORS set-up is needed.
"""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

_CONFIG = """window.config = {routerBasename: '/', extensions: [], modes: [], showStudyList: true,
  defaultDataSourceName: 'pacs', dataSources: [{namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
  sourceName: 'pacs', configuration: {friendlyName: 'PACS', name: 'pacs', wadoUriRoot: '/wado',
  qidoRoot: '/dicom-web', wadoRoot: '/dicom-web', qidoSupportsIncludeField: false, imageRendering: 'wadors',
  thumbnailRendering: 'wadors', enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: true,
  omitQuotationForMultipartRequest: true, bulkDataURI: {enabled: true}}}]};"""
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


class OhifServer:
    """OHIF's dist at / (our app-config.js), /dicom-web and /wado proxied to `pacs`; 127.0.0.1 only."""

    def __init__(self, dist: Path, pacs: str, port: int):
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(dist), **kwargs)

            def log_message(self, *args):
                pass

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith(("/dicom-web", "/wado")):
                    accept = {"Accept": self.headers["Accept"]} if self.headers["Accept"] else {}
                    try:
                        with urllib.request.urlopen(urllib.request.Request(pacs + self.path, headers=accept),
                                                    timeout=60) as answer:
                            return self._send(answer.status, answer.headers.get("Content-Type", ""), answer.read())
                    except urllib.error.HTTPError as error:
                        return self._send(error.code, "text/plain", error.read())
                if path == "/app-config.js":
                    return self._send(200, "application/javascript", _CONFIG.encode())
                if not (dist / path.lstrip("/")).is_file():
                    self.path = "/index.html"  # the viewer's own routes
                return super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> OhifServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def green_pixels(png: bytes) -> int:
    """Pixels where green clearly dominates: the overlay on a grey CT."""
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb[..., 1] > rgb[..., 0] + 40) & (rgb[..., 1] > rgb[..., 2] + 40)).sum())


def show_seg(url: str, study: str, seg_description: str, timeout_s: float = 180) -> tuple[bytes, bytes, list[str]]:
    """Open the study, load the SEG series onto its image: screenshots before and after, and the console."""
    import time

    from playwright.sync_api import sync_playwright

    console: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: console.append(message.text[:300]))
            page.goto(f"{url}/viewer?StudyInstanceUIDs={study}", timeout=timeout_s * 1000)
            thumbnail = page.get_by_text(seg_description).first
            thumbnail.wait_for(timeout=timeout_s * 1000)
            time.sleep(3)
            before = page.screenshot()
            for _ in range(10):  # the first-visit tour and notice may appear late and cover the page
                for button in ("Skip all", "Confirm and hide"):
                    try:
                        page.get_by_text(button).click(timeout=2000)
                    except Exception:  # not shown (yet): nothing to close
                        pass
                try:
                    thumbnail.dblclick(timeout=10000)
                    break
                except Exception:  # covered: close what covers it and try again
                    page.keyboard.press("Escape")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not any("SEG parse complete" in line for line in console):
                time.sleep(1)
            time.sleep(5)  # the overlay's first render
            return before, page.screenshot(), console
        finally:
            browser.close()
