"""HTTP connections with bounded threads, memory and time, for the explorer's server.

:class:`BoundedHTTPServer` gives every connection a thread that receives its requests (at
most ``max_connections``), and the work a request asks for one of ``max_threads``
working slots, taken only once the whole request has arrived: clients that send slowly
hold a connection, never a slot. Time is bounded per request, not per read: the head must
arrive within ``head_timeout`` seconds and the whole request within ``request_timeout``
(408 and the connection closed otherwise), so a client sending one byte a second cannot
keep its connection. When every connection is taken, the one that has waited longest for
its request head is closed to make room. Request bodies share one budget of bytes.

:class:`BoundedHandler` keeps each answer until the request has given back its working
slot (a client slow to read holds no slot either) and answers every error as JSON.
"""

from __future__ import annotations

import io
import json
import logging
import math
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ._requests import HTTPError

__all__ = ["BoundedHTTPServer", "BoundedHandler"]

logger = logging.getLogger("bagnet.app.server")

# A client going away mid-request is not the server's problem: no traceback for these.
_DISCONNECTS = (ConnectionError, TimeoutError)
# Seconds an answer may take to be sent (a client that stops reading holds its thread no longer).
_WRITE_TIMEOUT = 30.0
# After an error answer to a client that may still be sending, seconds its further bytes
# are read and dropped before the connection is closed: closing with unread bytes resets
# the connection, and the reset can destroy the answer before the client has read it.
_LINGER = 1.0
# A request body over the limit is still read (and thrown away) up to this many extra
# bytes, so that the browser receives the 413 answer instead of a reset connection.
_DRAIN_SLACK = 64 * 2**20


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


class _ByteBudget:
    """Bytes of request bodies held at once, across threads: a body is read only once its
    length is reserved."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    def reserve(self, n: int, deadline: float) -> bool:
        """Reserve ``n`` bytes, waiting until ``deadline`` (``time.monotonic()``) at most."""
        with self._cond:
            while self.used + n > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class _DeadlineReader(io.RawIOBase):
    """A socket's input read against one deadline for a whole request, not a timeout per
    ``recv`` (with that, a client sending one byte a second holds its connection forever)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.deadline = math.inf  # time.monotonic() by which the current part must have arrived
        self.received = 0  # bytes of the current request so far
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(min(left, 3600.0))
        try:
            n = self._sock.recv_into(buffer)
        except TimeoutError:
            self.expired = True
            raise
        finally:
            self._sock.settimeout(_WRITE_TIMEOUT)  # for the answer
        self.received += n
        return n


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server whose connections, work, memory and waiting are bounded.

    Args:
        address: ``(host, port)``; port 0 picks a free one.
        handler: a :class:`BoundedHandler` subclass.
        max_upload_bytes: larger request bodies are refused with 413.
        max_threads: requests worked on at the same time; further complete requests wait
            for a slot. Bodies being received or worked on take at most
            ``max_threads * max_upload_bytes`` together.
        head_timeout: seconds a connection has to send a whole request head, counted from
            its opening (or, were a connection kept alive, the end of the previous
            answer); then it is answered 408 (closed silently if it sent nothing) and closed.
        request_timeout: seconds for a whole request, head and body (an upload on a slow
            link); at least ``head_timeout``.
        max_connections: connections open at the same time, each with a thread that
            receives its requests. When all are taken, the one that has waited longest
            for a request head is closed to make room for a new one.
    """

    daemon_threads = True
    # Ctrl+C does not wait for clients that hold their connections open.
    block_on_close = False
    # Several quick requests from one page (thumbnails) should not be refused.
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BoundedHandler], *, max_upload_bytes: int,
                 max_threads: int, head_timeout: float, request_timeout: float, max_connections: int):
        if min(max_upload_bytes, max_threads, max_connections) < 1:
            raise ValueError("max_upload_bytes, max_threads and max_connections must be positive")
        if not 0 < head_timeout <= request_timeout < math.inf:
            raise ValueError(f"timeouts must satisfy 0 < head_timeout <= request_timeout, got {head_timeout} and {request_timeout}")
        self.max_upload_bytes = max_upload_bytes
        self.max_threads = max_threads
        self.max_connections = max_connections
        self.head_timeout = float(head_timeout)
        self.request_timeout = float(request_timeout)
        self._handler_slots = threading.BoundedSemaphore(max_threads)
        self._connection_slots = threading.BoundedSemaphore(max_connections)
        self._bodies = _ByteBudget(max_threads * max_upload_bytes)
        self._handlers: set[BoundedHandler] = set()  # open connections (their handlers)
        self._handlers_lock = threading.Lock()
        self._stopping = False
        self._working = True  # False once stop_working() was called
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        # Each connection gets a thread that receives its requests, up to max_connections;
        # the accept loop makes room by closing the connection that has waited longest for
        # a request head (a slow or idle client), else waits for one to end.
        while not self._connection_slots.acquire(blocking=False):
            evicted = self._evict_oldest_waiting()  # its thread ends at once and frees the slot
            if self._connection_slots.acquire(timeout=1.0 if evicted else 0.1):
                break
            if self._stopping:
                self.shutdown_request(request)
                return
        release = _ReleaseOnce(self._connection_slots)
        try:
            threading.Thread(target=self._handle_in_thread, args=(request, client_address, release),
                             name="bagnet-serve-request", daemon=True).start()
        except BaseException:  # e.g. Ctrl+C while starting the thread: the slot is not leaked
            release()
            raise

    def _evict_oldest_waiting(self) -> bool:
        """Close the connection that has waited longest for its request head; False if none waits."""
        with self._handlers_lock:
            waiting = [h for h in self._handlers if h.state == "head"]
            if not waiting:
                return False
            oldest = min(waiting, key=lambda h: h.since)
            oldest.state = "evicted"
        logger.debug("closing the connection of %s to make room: no request for %.1f s",
                     oldest.client_address[0], time.monotonic() - oldest.since)
        try:
            oldest.connection.shutdown(socket.SHUT_RDWR)  # wakes its thread, which then ends
        except OSError:
            pass
        return True

    def requests_in_progress(self) -> int:
        """Requests being worked on now (analysed or drawn), not those still arriving."""
        with self._handlers_lock:
            return sum(h.state == "busy" for h in self._handlers)

    def stop_working(self) -> int:
        """Start no more work: requests that reach a working slot from now on are answered
        503. Returns how many are being worked on (they go on to their end)."""
        with self._handlers_lock:
            self._working = False
            return sum(h.state == "busy" for h in self._handlers)

    def shutdown(self) -> None:
        self._stopping = True
        super().shutdown()

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


class BoundedHandler(BaseHTTPRequestHandler):
    """Receives requests against their deadlines; a subclass's ``do_*`` methods hand each
    to :meth:`_receive_and_work` with what it asks for, and answer with :meth:`_send`."""

    server: BoundedHTTPServer
    timeout = _WRITE_TIMEOUT  # reads have their own deadline (_DeadlineReader)
    # "head" (waiting for a request head), "body" (receiving its body), "busy" (working on
    # it, in one of the server's max_threads slots), "answer" or "evicted"; since when.
    state = "head"
    since = 0.0
    _body = b""  # the request's body, received before its handler runs (routes that take one)
    _linger = False  # an error was answered: drain what the client still sends before closing
    _reserved = 0  # bytes of the server's body budget this request holds

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader, self.rbufsize if self.rbufsize > 0 else io.DEFAULT_BUFFER_SIZE)
        self.since = time.monotonic()
        with self.server._handlers_lock:
            self.server._handlers.add(self)

    def finish(self) -> None:
        with self.server._handlers_lock:
            self.server._handlers.discard(self)
        try:
            super().finish()
            if self._linger:
                self._drain_before_close()
        except OSError:
            pass

    def _drain_before_close(self) -> None:
        self.connection.shutdown(socket.SHUT_WR)  # the answer is complete: the client sees its end
        end = time.monotonic() + _LINGER
        while (left := end - time.monotonic()) > 0:
            self.connection.settimeout(left)
            try:
                if not self.connection.recv(65536):
                    return
            except (TimeoutError, OSError):
                return

    def _set_state(self, state: str) -> None:
        with self.server._handlers_lock:
            if state == "busy" and not self.server._working:
                self.close_connection = True
                raise HTTPError(503, "the server is stopping")
            if self.state != "evicted" or state == "busy":  # busy is counted whatever happened before
                self.state = state

    def handle_one_request(self) -> None:
        # One deadline for the whole head (from the end of the previous answer) and one for
        # the whole request: a client trickling its bytes cannot stretch either.
        start = self.since = time.monotonic()
        self._set_state("head")
        self._reader.deadline = start + self.server.head_timeout
        self._request_deadline = start + self.server.request_timeout
        self._reader.received = 0
        self._reader.expired = False
        self._answer: tuple | None = None
        self._reserved = 0
        super().handle_one_request()  # a TimeoutError ends it with close_connection set
        if self._reader.expired and self.state == "head" and self._reader.received:
            # Part of a head and then too little: say why before closing. (A kept-alive
            # connection that sent nothing is closed silently, as browsers expect.)
            self.request_version, self.requestline, self.command = "HTTP/1.0", "", ""
            self.send_error(408, f"the request did not arrive within {self.server.head_timeout:g} s")
        if self.state == "evicted":
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        """Keep the answer; it is sent once the request has given back its working slot."""
        self._answer = (status, body, content_type, headers)

    def _write_answer(self) -> None:
        if self._answer is None:
            return
        status, body, content_type, headers = self._answer
        self._answer = None
        self._linger = self._linger or status >= 400
        self.send_response(status)
        fields = {"Content-Type": content_type, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                  "X-Content-Type-Options": "nosniff", **(headers or {})}
        for k, v in fields.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's errors (malformed request line or headers, unknown
        method, over-long URL) as JSON instead of its HTML page."""
        self.close_connection = True
        self._linger = True
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

    def _receive_and_work(self, resolve, what: str) -> None:
        """Receive the rest of the request, do its work in a working slot, then answer.

        ``resolve()`` checks the request (an :class:`HTTPError` refuses it) and returns
        ``(work, takes_body)``: ``work()`` answers with :meth:`_send`; with ``takes_body``
        the body is received first (into ``self._body``), before a slot is taken.
        """
        # The head is in; the rest of the request (its body) has until the request's deadline.
        self._reader.deadline = self._request_deadline
        try:
            work, takes_body = resolve()
            if takes_body:  # received before taking a working slot: slow uploads hold none
                self._set_state("body")
                self._body = self._read_body()
            elif self.headers.get("Content-Length", "0").strip() not in ("", "0") or self.headers.get("Transfer-Encoding"):
                self.close_connection = True  # a body nobody reads: the next request cannot be told from it
            with self.server._handler_slots:
                self._set_state("busy")
                try:
                    work()
                finally:
                    self._set_state("answer")
        except HTTPError as e:
            if self.state == "head" and self.command == "POST":
                self.close_connection = True  # refused before its body was read
            self._answer_error(e.status, e.message, e.headers)
        except _DISCONNECTS as e:
            # The browser went away (or stalled past the deadline): nothing to answer.
            logger.debug("%s %s: client gone (%s)", self.command, what, e)
            self.close_connection = True
        except Exception:  # never a traceback or internals to the client: logged here in full
            logger.exception("error answering %s %s", self.command, what)
            self._answer_error(500, "internal error (the details are in the server's log)")
        finally:
            self._body = b""
            if self._reserved:
                self.server._bodies.release(self._reserved)
                self._reserved = 0
        try:
            self._write_answer()
        except _DISCONNECTS as e:
            logger.debug("%s %s: client gone while answered (%s)", self.command, what, e)
            self.close_connection = True

    def _answer_error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._json({"error": message}, status, headers)

    # -- request bodies --------------------------------------------------------------

    def _read_body(self) -> bytes:
        limit = self.server.max_upload_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HTTPError(411, "send the image with a Content-Length (chunked uploads are not supported)")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise HTTPError(411, "the upload has no Content-Length") from None
        if length < 0:
            self.close_connection = True
            raise HTTPError(400, "negative Content-Length")
        try:
            if length > limit:
                if length <= limit + _DRAIN_SLACK:
                    self._discard(length)
                else:
                    self.close_connection = True
                raise HTTPError(413, f"the file is {_mb(length)}, over the upload limit of {_mb(limit)}")
            if length == 0:
                raise HTTPError(400, "the upload is empty; choose an image file")
            if not self.server._bodies.reserve(length, self._request_deadline):
                self.close_connection = True  # its body is still on the way: the connection is done
                raise HTTPError(503, "the server is receiving too many uploads at once; try again in a moment",
                                {"Retry-After": "5"})
            self._reserved = length
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise HTTPError(408, f"the upload did not arrive within {self.server.request_timeout:g} s; "
                                 "try again (or on a faster connection)") from None
        if len(body) != length:
            self.close_connection = True
            raise HTTPError(400, "the upload was cut short; try again")
        return body

    def _discard(self, length: int) -> None:
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 2**20))
            if not chunk:
                break
            left -= len(chunk)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} kB"


