"""``bagnet serve``: a small web page to explore a BagNet's evidence maps class by class.

Standard library only (:class:`http.server.ThreadingHTTPServer`, with the bounds of
``_connections``): one thread per connection, no shared "current image". Every upload gets an unguessable id; its analysis (logits and
the evidence maps of every class, computed once) lives in a bounded LRU store under that
id, so clicking through classes only re-colours cached maps.

Every answer that is not a page, a script, an image or a download is JSON; errors are
``{"error": message}`` with a 4xx status (405 names the allowed methods in ``Allow``), or
500 "internal error" with the details in the server's log only.

Any web page the user visits can send requests to a server on localhost, so requests
whose ``Host`` is not this server's (DNS rebinding) and state-changing requests from
another origin are refused with 403. Memory is bounded: request bodies by
``max_upload_bytes`` each and ``max_threads * max_upload_bytes`` together, requests being
worked on at the same time by ``max_threads``, open connections by ``max_connections``,
images by ``max_pixels`` and by cutting extreme aspect ratios before resizing, and
decoding and the model passes by the explorer's ``max_concurrent``.

Time is bounded per request, not per read: a request's head must arrive within
``head_timeout`` seconds and the whole request (head and body) within ``request_timeout``,
however the client trickles its bytes; else it is answered 408 and its connection closed.
Slow clients hold only a connection, not one of the ``max_threads`` slots that do the work,
and when all ``max_connections`` are taken, the connection that has waited longest for
its request head is closed to make room: clients sending one byte a second cannot lock
other users out.

Routes::

    GET  /                                  the page (static/index.html)
    GET  /static/<file>                     its script and style sheet
    GET  /favicon.ico                       the page's icon (a PNG drawn in code)
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
    GET  /api/uploads/<id>/result.json?res=...[&maps=1]          predictions, top patches (JSON, saved as
                                                                 NAME-RES-results[-with-maps].json);
                                                                 maps=1: with the evidence maps;
                                                                 certify=2%[&defense=clip]: with "certified"
    GET  /api/uploads/<id>/certificate?patch=2%[&defense=mask|clip]  is the defended prediction certified
                                                                 against any such sticker; the removed window
    GET  /api/uploads/<id>/cleanser?patch=2%[&model=reference|bagnet][&wait=0]
                                            PatchCleanser's verdict for the --cleanser-model (or the BagNet):
                                            prediction, case, one-mask predictions, agreeing pairs;
                                            wait=0: 202 {"state", "done", "total"} until it is computed
                                            (by a request without wait=0), then the verdict

A PatchCleanser verdict costs hundreds of passes (666 for 6 x 6 masks): it is computed by the
request that asks for it, in its working slot, one verdict at a time, each pass taking the
explorer's model slot for itself only, so other users' uploads and maps go in between. At
most ``max_cleanser_requests`` requests compute or queue for a verdict at once (others get
503 with ``Retry-After``), so they never take all the working slots; a request for a verdict
already under way waits for it. ``result.json`` with
``certify=`` includes the reference model's verdict as ``"cleanser"``.

``vmax`` fixes the colour scale at ``+-vmax`` (the page's "same scale across images");
without it every class of an image shares that image's scale.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from importlib import resources
from pathlib import PurePath
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .._extras import require
from ..data.images import ImageError
from ..explain._colour import colormap_stops
from ._cleanser import ROLES
from ._connections import BoundedHandler, BoundedHTTPServer
from ._hosts import WILDCARDS, HostPolicy, is_loopback, reachable_urls
from ._requests import HTTPError, _certify, _parse_certify, _parse_class, _parse_patch, _parse_res, _parse_vmax
from .explorer import SCALE_PERCENTILE, ExploredImage, Explorer
from .samples import SAMPLE_NAMES, sample_image, sample_note, sample_subject

__all__ = ["DEFAULT_MAX_PIXELS", "ExplorerServer", "make_server"]

logger = logging.getLogger(__name__)

# Uploads with more pixels are refused before decoding (decompression bombs): 40 MP is
# more than any phone photo, and decoding it takes 120 MB.
DEFAULT_MAX_PIXELS = 40_000_000
_STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


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


class ExplorerServer(BoundedHTTPServer):
    """The HTTP server; ``serve_forever()`` in any thread, ``shutdown()`` from another.

    Args:
        address: ``(host, port)``; port 0 picks a free one (see ``server_address``).
        explorer: the model wrapper that analyses images.
        max_upload_bytes: larger request bodies are refused with 413.
        max_pixels: images with more pixels are refused before decoding.
        max_uploads: analyses kept in memory (least recently used dropped first).
        max_threads: requests worked on (analysed, drawn) at the same time; further
            complete requests wait for a slot. Request bodies take at most
            ``max_threads * max_upload_bytes`` together.
        allow_hosts: host names (or addresses) besides the bound address and localhost
            that the page may be reached by, e.g. this machine's name on the network.
        head_timeout: seconds a connection has from its opening to send a whole request
            head; then it is answered 408 (closed silently if it sent nothing) and closed.
        request_timeout: seconds for a whole request, head and body (an upload on a slow
            link); at least ``head_timeout``.
        max_connections: connections open at the same time, each with its own thread that
            receives its request. When all are taken, the one that has waited longest
            for its request head is closed to make room for a new one.
        max_cleanser_requests: requests that compute or wait for a PatchCleanser verdict at
            the same time (default: a quarter of ``max_threads``, at least 1); more are
            answered 503, so that slow verdicts never hold every working slot.
    """

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
        head_timeout: float = 10.0,
        request_timeout: float = 120.0,
        max_connections: int = 128,
        max_cleanser_requests: int | None = None,
    ):
        if min(max_pixels, max_uploads) < 1:
            raise ValueError("max_pixels and max_uploads must be positive")
        if max_cleanser_requests is None:
            max_cleanser_requests = max(1, max_threads // 4)
        if max_cleanser_requests < 1:
            raise ValueError(f"max_cleanser_requests must be at least 1, got {max_cleanser_requests}")
        self._cleanser_requests = threading.BoundedSemaphore(max_cleanser_requests)
        self.explorer = explorer
        self.max_pixels = max_pixels
        self.store = _Store(max_uploads)
        self._thumbs: dict[str, bytes] = {}
        self._thumbs_lock = threading.Lock()
        self.hosts = HostPolicy(address[0], allow_hosts)
        # matplotlib imported here, once: first imported by two request threads at once (the
        # page's config and its icon), one of them can find it half initialized.
        self._colormap = colormap_stops()
        _favicon_png()
        require("matplotlib.figure", "the explorer's figures")
        require("matplotlib.backends.backend_agg", "the explorer's figures")
        super().__init__(address, _Handler, max_upload_bytes=max_upload_bytes, max_threads=max_threads,
                         head_timeout=head_timeout, request_timeout=request_timeout, max_connections=max_connections)

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
            "colormap": self._colormap,
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
            # The PatchCleanser reference model, or None: the page then shows no PatchCleanser panel.
            "cleanser": None if ex.cleanser_model is None else ex.cleanser_model.to_dict(),
        }

    def cleanser_verdict(self, analysis: ExploredImage, patch: str, model: str = "reference") -> dict:
        """:meth:`ExploredImage.cleanser` within the server's bound on verdict requests
        (503 beyond it). A verdict already computed is answered at once, and one being
        computed is waited for without counting against the bound (it costs nothing more)."""
        with _cleanser_errors():
            done, progress = analysis.cleanser_state(patch, model)
            if done is not None:
                return done
            if progress["state"] != "not started":  # another request computes it: wait for that one
                return analysis.cleanser(patch, model)
            if not self._cleanser_requests.acquire(blocking=False):
                raise HTTPError(503, "the server is computing other PatchCleanser verdicts; try again in a moment",
                                {"Retry-After": "5"})
            try:
                return analysis.cleanser(patch, model)
            finally:
                self._cleanser_requests.release()

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


class _Handler(BoundedHandler):
    server: ExplorerServer
    server_version = "bagnet-serve"

    def _route(self, path: str, method: str):
        """``(handler function, path groups, whether it takes a body)`` of a request."""
        allowed = []
        for route_method, pattern, fn, body in _ROUTES:
            m = re.fullmatch(pattern, path)
            if m and route_method == method:
                return fn, m.groups(), body
            if m:
                allowed += ["GET", "HEAD"] if route_method == "GET" else [route_method]
        if allowed:
            raise HTTPError(405, f"{path} does not take {self.command}; use {' or '.join(allowed)}",
                            {"Allow": ", ".join(allowed)})
        raise HTTPError(404, f"no such page: {path}")

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        method = "GET" if self.command == "HEAD" else self.command

        def resolve():
            self._check_origin()
            fn, groups, takes_body = self._route(url.path, method)
            return (lambda: fn(self, *groups, query=query)), takes_body

        self._receive_and_work(resolve, url.path)

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

    # -- routes ----------------------------------------------------------------------

    def _static(self, name: str = "index.html", query=None) -> None:
        if name not in _STATIC:
            raise HTTPError(404, f"no such file: {name}")
        body = resources.files("bagnet.app").joinpath("static", name).read_bytes()
        self._send(200, body, _STATIC[name] + "; charset=utf-8")

    def _favicon(self, query=None) -> None:
        self._send(200, _favicon_png(), "image/png", {"Cache-Control": "max-age=86400"})

    def _config(self, query=None) -> None:
        self._json(self.server.config())

    def _thumbnail(self, name: str, query=None) -> None:
        if name not in SAMPLE_NAMES:
            raise HTTPError(404, f"no sample image {name!r}")
        self._send(200, self.server.thumbnail(name), "image/jpeg", {"Cache-Control": "max-age=3600"})

    def _upload(self, query=None) -> None:
        name = query.get("name") or "upload"
        self._explore(self._body, name, max_pixels=self.server.max_pixels)

    def _sample(self, name: str, query=None) -> None:
        if name not in SAMPLE_NAMES:
            raise HTTPError(404, f"no sample image {name!r}")
        # What the photo shows is known: say whether the model's classes can name it at all.
        self._explore(sample_image(name), name, note=sample_note(name, self.server.explorer.classes))

    def _explore(self, image, name: str, note: str | None = None, **kwargs) -> None:
        start = time.perf_counter()
        try:
            analysis = self.server.explorer.explore(image, name=name, **kwargs)
        except ImageError as e:
            raise HTTPError(415 if "not an image" in str(e) else 400, str(e)) from None
        key = self.server.store.add(analysis)
        ms = round(1000 * (time.perf_counter() - start), 1)
        self._json({"id": key, **analysis.summary(), "sample_note": note, "ms": ms}, 201)

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

    def _cleanser(self, key: str, query=None) -> None:
        analysis = self.server.store.get(key)
        patch = _parse_patch(query, "patch")
        model = query.get("model", "reference")
        if model not in ROLES:
            raise HTTPError(400, f"model must be 'reference' (the --cleanser-model) or 'bagnet', got {model[:40]!r}")
        wait = query.get("wait", "1")
        if wait not in ("0", "1"):
            raise HTTPError(400, f"wait must be 0 or 1, got {wait[:40]!r}")
        if wait == "0":  # how far the verdict is, for the page's progress line; computes nothing
            with _cleanser_errors():
                done, progress = analysis.cleanser_state(patch, model)
            self._json(done if done is not None else progress, 200 if done is not None else 202)
            return
        self._json(self.server.cleanser_verdict(analysis, patch, model))

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
            if self.server.explorer.cleanser_model is not None:  # the page's PatchCleanser panel
                record["cleanser"] = self.server.cleanser_verdict(analysis, patch)
        body = json.dumps(record, indent=1).encode()
        # Each download its own name: what it holds, at which resolution, certified how.
        kind = "results-with-maps" if maps == "1" else "results"
        cert = "" if patch is None else f"-certified-{patch.replace('%', 'pct')}-{defense}"
        filename = _safe_name(f"{PurePath(analysis.name).stem}-{res}-{kind}{cert}.json")
        self._send(200, body, "application/json", {"Content-Disposition": f'attachment; filename="{filename}"'})


@contextlib.contextmanager
def _cleanser_errors():
    """A PatchCleanser request's errors as HTTP answers: no reference model is 404; an
    unreadable size, a sticker larger than the image or too few masks is 400."""
    try:
        yield
    except LookupError as e:
        raise HTTPError(404, str(e)) from None
    except ValueError as e:
        raise HTTPError(400, str(e)) from None


# (method, path, handler, whether the request has a body to receive first)
_ROUTES = (
    ("GET", r"/", _Handler._static, False),
    ("GET", r"/static/([A-Za-z0-9_.-]+)", _Handler._static, False),
    ("GET", r"/favicon\.ico", _Handler._favicon, False),
    ("GET", r"/api/config", _Handler._config, False),
    ("GET", r"/api/samples/([a-z_]+)\.jpg", _Handler._thumbnail, False),
    ("POST", r"/api/uploads", _Handler._upload, True),
    ("POST", r"/api/samples/([a-z_]+)", _Handler._sample, False),
    ("GET", r"/api/uploads/([^/]+)/view", _Handler._view, False),
    ("GET", r"/api/uploads/([^/]+)/figure\.(png|svg)", _Handler._figure, False),
    ("GET", r"/api/uploads/([^/]+)/result\.json", _Handler._result, False),
    ("GET", r"/api/uploads/([^/]+)/certificate", _Handler._certificate, False),
    ("GET", r"/api/uploads/([^/]+)/cleanser", _Handler._cleanser, False),
)


@functools.cache
def _favicon_png() -> bytes:
    """The page's icon, drawn here: a 4 x 4 bag of patches in the evidence colours."""
    from PIL import Image

    from ..explain._colour import evidence_rgba

    values = np.array([[0.9, -0.3, 0.1, 0.6], [-0.8, 1.0, 0.4, -0.2], [0.2, 0.7, -1.0, 0.95], [0.5, -0.5, 0.85, 0.3]])
    cells = evidence_rgba(values, 1.0, uint8=True)[..., :3]
    img = np.kron(cells, np.ones((8, 8, 1), np.uint8))  # 32 x 32, 8 px per patch
    img[::8], img[:, ::8] = 255, 255  # white seams between the patches
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]
