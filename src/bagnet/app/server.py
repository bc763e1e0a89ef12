"""``bagnet serve``: a small web page to explore a BagNet's evidence maps class by class.

Standard library only (:class:`http.server.ThreadingHTTPServer`): one thread per request,
no shared "current image". Every upload gets an unguessable id; its analysis (logits and
the evidence maps of every class, computed once) lives in a bounded LRU store under that
id, so clicking through classes only re-colours cached maps.

Every answer that is not a page, a script, an image or a download is JSON; errors are
``{"error": message}`` with a 4xx status (405 names the allowed methods in ``Allow``), or
500 "internal error" with the details in the server's log only.

Any web page the user visits can send requests to a server on localhost, so requests
whose ``Host`` is not this server's (DNS rebinding) and state-changing requests from
another origin are refused with 403. Memory is bounded: request bodies by
``max_upload_bytes``, concurrent requests by ``max_threads``, images by ``max_pixels``
and by cutting extreme aspect ratios before resizing, and decoding and the model passes
by the explorer's ``max_concurrent``.

Routes::

    GET  /                                  the page (static/index.html)
    GET  /static/<file>                     its script and style sheet
    GET  /api/config                        model, classes, limits, sample names
    GET  /api/samples/<name>.jpg            sample thumbnail
    POST /api/uploads                       body = the image file's bytes -> analysis summary
    POST /api/samples/<name>                analyse a sample image      -> analysis summary and
                                            "sample_note": whether the model's classes can name it
    GET  /api/uploads/<id>/view?class=C&res=native|full[&vmax=V]  heatmap PNG (data URL) + top patches
    GET  /api/uploads/<id>/figure.png?class=C&res=...[&vmax=V]   the figure (200 dpi), as a download
    GET  /api/uploads/<id>/figure.svg?class=C&res=...[&vmax=V]   the same figure as SVG
                                                                 (both: [&certify=2%[&defense=clip]] adds
                                                                 the certificate line and removed window)
    GET  /api/uploads/<id>/result.json?res=...[&maps=1]          predictions, top patches (JSON);
                                                                 maps=1: with the evidence maps;
                                                                 certify=2%[&defense=clip]: with "certified"
    GET  /api/uploads/<id>/certificate?patch=2%[&defense=mask|clip]  is the defended prediction certified
                                                                 against any such sticker; the removed window

``vmax`` fixes the colour scale at ``+-vmax`` (the page's "same scale across images");
without it every class of an image shares that image's scale.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import PurePath
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .._extras import require
from ..data.images import ImageError
from ._hosts import WILDCARDS, HostPolicy, is_loopback, reachable_urls
from ._requests import HTTPError, _certify, _parse_certify, _parse_class, _parse_res, _parse_vmax
from .explorer import SCALE_PERCENTILE, ExploredImage, Explorer
from .samples import SAMPLE_NAMES, sample_image, sample_note, sample_subject

__all__ = ["DEFAULT_MAX_PIXELS", "ExplorerServer", "make_server"]

logger = logging.getLogger(__name__)

# Uploads with more pixels are refused before decoding (decompression bombs): 40 MP is
# more than any phone photo, and decoding it takes 120 MB.
DEFAULT_MAX_PIXELS = 40_000_000
_STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
# A request body over the limit is still read (and thrown away) up to this many extra
# bytes, so that the browser receives the 413 answer instead of a reset connection.
_DRAIN_SLACK = 64 * 2**20
# A client going away mid-request is not the server's problem: no traceback for these.
_DISCONNECTS = (ConnectionError, TimeoutError)


class _Store:
    """Analyses by upload id, least recently used dropped first; safe across threads."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, ExploredImage] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, analysis: ExploredImage) -> str:
        key = secrets.token_urlsafe(18)
        with self._lock:
            self._items[key] = analysis
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> ExploredImage:
        with self._lock:
            analysis = self._items.get(key) if _ID.match(key) else None
            if analysis is None:
                raise HTTPError(404, "this image is no longer on the server (it keeps the latest uploads); upload it again")
            self._items.move_to_end(key)
            return analysis


class _ReleaseOnce:
    """Releases a semaphore the first time it is called, whichever thread calls first."""

    def __init__(self, semaphore: threading.Semaphore):
        self._semaphore, self._lock, self._done = semaphore, threading.Lock(), False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._semaphore.release()


class ExplorerServer(ThreadingHTTPServer):
    """The HTTP server; ``serve_forever()`` in any thread, ``shutdown()`` from another.

    Args:
        address: ``(host, port)``; port 0 picks a free one (see ``server_address``).
        explorer: the model wrapper that analyses images.
        max_upload_bytes: larger request bodies are refused with 413.
        max_pixels: images with more pixels are refused before decoding.
        max_uploads: analyses kept in memory (least recently used dropped first).
        max_threads: requests handled at the same time; further connections wait in the
            listen queue. Bounds the memory of request bodies to
            ``max_threads * max_upload_bytes``.
        allow_hosts: host names (or addresses) besides the bound address and localhost
            that the page may be reached by, e.g. this machine's name on the network.
    """

    daemon_threads = True
    # Ctrl+C does not wait for clients that hold their connections open.
    block_on_close = False
    # Several quick requests from one page (thumbnails) should not be refused.
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        explorer: Explorer,
        *,
        max_upload_bytes: int = 10 * 2**20,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_uploads: int = 32,
        max_threads: int = 16,
        allow_hosts: Iterable[str] = (),
    ):
        if min(max_upload_bytes, max_pixels, max_uploads, max_threads) < 1:
            raise ValueError("max_upload_bytes, max_pixels, max_uploads and max_threads must be positive")
        self.explorer = explorer
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.max_threads = max_threads
        self.store = _Store(max_uploads)
        self._thumbs: dict[str, bytes] = {}
        self._thumbs_lock = threading.Lock()
        self._handler_slots = threading.BoundedSemaphore(max_threads)
        self.hosts = HostPolicy(address[0], allow_hosts)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        # Blocks the accept loop while max_threads requests are being handled: further
        # clients wait in the kernel's listen queue instead of each getting a thread.
        self._handler_slots.acquire()
        release = _ReleaseOnce(self._handler_slots)
        try:
            threading.Thread(target=self._handle_in_thread, args=(request, client_address, release),
                             name="bagnet-serve-request", daemon=True).start()
        except BaseException:  # e.g. Ctrl+C while starting the thread: the slot is not leaked
            release()
            raise

    def _handle_in_thread(self, request, client_address, release) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            release()

    def handle_error(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, _DISCONNECTS):
            logger.debug("%s went away: %s", client_address[0], error)
        else:
            logger.error("error handling a request from %s", client_address[0], exc_info=error)

    @property
    def url(self) -> str:
        """The page's address on this machine (loopback for a wildcard bind)."""
        host, port = self.server_address[:2]
        if host in WILDCARDS:
            host = "::1" if self.address_family == socket.AF_INET6 else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    def config(self) -> dict:
        ex = self.explorer
        unknown = (getattr(ex.model, "pretrained_cfg", None) or {}).get("unknown")
        return {
            # How the "none of these classes" flag is set, or None: no threshold calibrated.
            "unknown": None if not unknown else {"method": unknown.get("method"), "threshold": unknown.get("threshold")},
            "colormap": _colormap_stops(),
            "scale_percentile": SCALE_PERCENTILE,
            "model": ex.model_name,
            "receptive_field": ex.receptive_field,
            "patch_stride": ex.patch_stride,
            "img_size": ex.img_size,
            "classes": ex.classes,
            "max_upload_bytes": self.max_upload_bytes,
            "samples": list(SAMPLE_NAMES),
            "sample_info": {n: {"kind": sample_subject(n).kind, "credit": sample_subject(n).credit} for n in SAMPLE_NAMES},
            "top_k": ex.top_k,
            "map_dtype": ex.map_dtype,
        }

    def thumbnail(self, name: str) -> bytes:
        with self._thumbs_lock:
            if name not in self._thumbs:
                img = sample_image(name)
                img.thumbnail((160, 160))
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=85)
                self._thumbs[name] = buf.getvalue()
            return self._thumbs[name]


def make_server(
    explorer: Explorer,
    host: str = "127.0.0.1",
    port: int = 8000,
    **kwargs: Any,
) -> ExplorerServer:
    """An :class:`ExplorerServer` bound to ``host:port`` (not yet serving).

    Binding to anything but a loopback address makes the page (and the model) reachable
    from other machines, without authentication: that is logged as a warning that names
    the URLs it can be reached at.
    """
    server = ExplorerServer((host, port), explorer, **kwargs)
    if not is_loopback(host):
        logger.warning(
            "WARNING: bagnet serve is listening on %s: anyone who can reach this machine can use "
            "the page, which has no authentication. Reachable at %s",
            host or "every interface", " or ".join(reachable_urls(*server.server_address[:2])),
        )
    return server


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    server_version = "bagnet-serve"
    timeout = 120  # seconds a silent client may hold its thread

    # -- plumbing --------------------------------------------------------------------

    def log_message(self, format: str, *args) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's errors (malformed request line or headers, unknown
        method, over-long URL) as JSON instead of its HTML page."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # not parsed far enough: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        reason = self.responses.get(code, ("error",))[0]
        text = message or reason
        if code == 501:
            text = f"method {self.command!r} is not supported; this server answers GET, HEAD and POST"
        try:
            self.send_response(code, reason)
            body = json.dumps({"error": text}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except _DISCONNECTS:
            pass

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        method = "GET" if self.command == "HEAD" else self.command
        try:
            self._check_origin()
            allowed = []
            for route_method, pattern, fn in _ROUTES:
                m = re.fullmatch(pattern, url.path)
                if m and route_method == method:
                    fn(self, *m.groups(), query=query)
                    return
                if m:
                    allowed += ["GET", "HEAD"] if route_method == "GET" else [route_method]
            if allowed:
                raise HTTPError(405, f"{url.path} does not take {self.command}; use {' or '.join(allowed)}",
                                {"Allow": ", ".join(allowed)})
            raise HTTPError(404, f"no such page: {url.path}")
        except HTTPError as e:
            self._answer_error(e.status, e.message, e.headers)
        except _DISCONNECTS as e:
            # The browser went away (or stalled past the timeout): nothing to answer.
            logger.debug("%s %s: client gone (%s)", self.command, url.path, e)
            self.close_connection = True
        except Exception:  # never a traceback or internals to the client: logged here in full
            logger.exception("error answering %s %s", self.command, url.path)
            self._answer_error(500, "internal error (the details are in the server's log)")

    def _answer_error(self, status: int, message: str, headers: dict | None = None) -> None:
        try:
            self._json({"error": message}, status, headers)
        except _DISCONNECTS:
            self.close_connection = True

    def _check_origin(self) -> None:
        """403 for requests addressed to another site's name (DNS rebinding) and for
        state-changing requests sent by a page of another origin (see ``_hosts``)."""
        problem = self.server.hosts.refusal(self.command, self.headers)
        if problem:
            self.close_connection = True
            raise HTTPError(403, problem)

    def do_GET(self) -> None:
        self._dispatch()

    # Every method reaches the router, so that a known path answers 405 with Allow.
    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    # -- request bodies --------------------------------------------------------------

    def _read_body(self) -> bytes:
        limit = self.server.max_upload_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise HTTPError(411, "send the image with a Content-Length (chunked uploads are not supported)")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HTTPError(411, "the upload has no Content-Length") from None
        if length < 0:
            raise HTTPError(400, "negative Content-Length")
        if length > limit:
            if length <= limit + _DRAIN_SLACK:
                self._discard(length)
            else:
                self.close_connection = True
            raise HTTPError(413, f"the file is {_mb(length)}, over the upload limit of {_mb(limit)}")
        if length == 0:
            raise HTTPError(400, "the upload is empty; choose an image file")
        body = self.rfile.read(length)
        if len(body) != length:
            raise HTTPError(400, "the upload was cut short; try again")
        return body

    def _discard(self, length: int) -> None:
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 2**20))
            if not chunk:
                break
            left -= len(chunk)

    # -- routes ----------------------------------------------------------------------

    def _static(self, name: str = "index.html", query=None) -> None:
        if name not in _STATIC:
            raise HTTPError(404, f"no such file: {name}")
        body = resources.files("bagnet.app").joinpath("static", name).read_bytes()
        self._send(200, body, _STATIC[name] + "; charset=utf-8")

    def _config(self, query=None) -> None:
        self._json(self.server.config())

    def _thumbnail(self, name: str, query=None) -> None:
        if name not in SAMPLE_NAMES:
            raise HTTPError(404, f"no sample image {name!r}")
        self._send(200, self.server.thumbnail(name), "image/jpeg", {"Cache-Control": "max-age=3600"})

    def _upload(self, query=None) -> None:
        body = self._read_body()
        name = query.get("name") or "upload"
        self._explore(body, name, max_pixels=self.server.max_pixels)

    def _sample(self, name: str, query=None) -> None:
        if name not in SAMPLE_NAMES:
            raise HTTPError(404, f"no sample image {name!r}")
        # What the photo shows is known: say whether the model's classes can name it at all.
        self._explore(sample_image(name), name, note=sample_note(name, self.server.explorer.classes))

    def _explore(self, image, name: str, note: str | None = None, **kwargs) -> None:
        try:
            analysis = self.server.explorer.explore(image, name=name, **kwargs)
        except ImageError as e:
            raise HTTPError(415 if "not an image" in str(e) else 400, str(e)) from None
        key = self.server.store.add(analysis)
        self._json({"id": key, **analysis.summary(), "sample_note": note}, 201)

    def _view(self, key: str, query=None) -> None:
        analysis = self.server.store.get(key)
        cls, res = _parse_class(analysis, query)
        start = time.perf_counter()
        view = analysis.view(cls, res, _parse_vmax(query))
        view["ms"] = round(1000 * (time.perf_counter() - start), 1)
        self._json(view)

    def _figure(self, key: str, fmt: str, query=None) -> None:
        analysis = self.server.store.get(key)
        cls, res = _parse_class(analysis, query)
        vmax = _parse_vmax(query)
        patch, defense = _parse_certify(query, "certify")
        if patch is not None:
            _certify(analysis, patch, defense)  # a bad size is a 400, before any drawing; the figure reuses it
        draw = analysis.figure_png if fmt == "png" else analysis.figure_svg
        data = draw(cls, res, vmax, certify=patch, defense=defense)
        filename = _safe_name(f"{PurePath(analysis.name).stem}-{analysis.class_name(cls)}-{res}.{fmt}")
        self._send(200, data, "image/png" if fmt == "png" else "image/svg+xml",
                   {"Content-Disposition": f'attachment; filename="{filename}"'})

    def _certificate(self, key: str, query=None) -> None:
        analysis = self.server.store.get(key)
        patch, defense = _parse_certify(query, "patch")
        if patch is None:
            raise HTTPError(400, "give the patch size to certify against, e.g. patch=2% (or a side in pixels)")
        self._json(_certify(analysis, patch, defense))

    def _result(self, key: str, query=None) -> None:
        analysis = self.server.store.get(key)
        res = _parse_res(query)
        maps = query.get("maps", "0")
        if maps not in ("0", "1"):
            raise HTTPError(400, f"maps must be 0 or 1, got {maps!r}")
        patch, defense = _parse_certify(query, "certify")
        record = analysis.to_dict(res, maps=maps == "1")
        if patch is not None:
            record["certified"] = _certify(analysis, patch, defense)
        body = json.dumps(record, indent=1).encode()
        filename = _safe_name(f"{PurePath(analysis.name).stem}-{res}.json")
        self._send(200, body, "application/json", {"Content-Disposition": f'attachment; filename="{filename}"'})


_ROUTES = (
    ("GET", r"/", _Handler._static),
    ("GET", r"/static/([A-Za-z0-9_.-]+)", _Handler._static),
    ("GET", r"/api/config", _Handler._config),
    ("GET", r"/api/samples/([a-z_]+)\.jpg", _Handler._thumbnail),
    ("POST", r"/api/uploads", _Handler._upload),
    ("POST", r"/api/samples/([a-z_]+)", _Handler._sample),
    ("GET", r"/api/uploads/([^/]+)/view", _Handler._view),
    ("GET", r"/api/uploads/([^/]+)/figure\.(png|svg)", _Handler._figure),
    ("GET", r"/api/uploads/([^/]+)/result\.json", _Handler._result),
    ("GET", r"/api/uploads/([^/]+)/certificate", _Handler._certificate),
)


def _colormap_stops(n: int = 11) -> list[str]:
    """The heatmaps' colour map (RdBu_r) as CSS colours from -vmax to +vmax, for the colour bar."""
    require("matplotlib", "the explorer's heatmaps")
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["RdBu_r"]
    return [to_hex(cmap(i / (n - 1))) for i in range(n)]


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} kB"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]
