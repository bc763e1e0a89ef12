"""Which requests a local web server should answer: ``Host`` and ``Origin`` checks.

Any web page the user visits can send requests to a server on localhost. Two defences:

* DNS rebinding: a page of another site whose name the attacker resolves to 127.0.0.1
  sends requests with that name as ``Host``; only the names this server is known by
  are answered.
* Cross-site requests: a page of another origin may still POST (an upload, a form);
  state-changing requests whose ``Origin`` (or ``Sec-Fetch-Site``) names another site
  are refused. Clients that are not browsers send neither header and are answered.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

__all__ = ["WILDCARDS", "HostPolicy", "is_loopback", "reachable_urls"]

# Names that always mean this machine; browsers never resolve "localhost" or
# "*.localhost" elsewhere (RFC 6761).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")
SAFE_METHODS = ("GET", "HEAD")


class HostPolicy:
    """The ``Host`` names and origins a server bound to ``bound`` answers.

    Args:
        bound: the address the server listens on.
        allow_hosts: further names (or addresses) it may be reached by.
    """

    def __init__(self, bound: str, allow_hosts: Iterable[str] = ()):
        self.names = {host_name(h) for h in (*LOOPBACK_NAMES, bound, *allow_hosts)} - {""}
        # Bound to every interface, the machine can be reached by any of its addresses,
        # and an address (unlike a name) cannot be rebound to another site.
        self.any_address = bound in WILDCARDS

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a ``Host`` header names this server (no header: not a browser)."""
        if host_header is None:
            return True
        name = host_name(host_header, with_port=True)
        if name in self.names or name.endswith(".localhost"):
            return True
        return self.any_address and _is_ip(name)

    def refusal(self, method: str, headers: Mapping[str, str]) -> str | None:
        """Why a request must be refused (403), or ``None`` to answer it."""
        host = headers.get("Host")
        if not self.host_allowed(host):
            return (f"unknown host {host!r}: this server answers to {', '.join(sorted(self.names))} "
                    "(start it with --allow-host NAME to add a name)")
        if method in SAFE_METHODS:
            return None
        origin = headers.get("Origin")
        if origin is None:
            if (headers.get("Sec-Fetch-Site") or "").lower() == "cross-site":
                return "requests from other sites are refused"
            return None  # not sent by a browser page (curl, scripts)
        if host is None or not _same_origin(origin, host):
            return f"requests from other sites are refused (Origin {origin!r})"
        return None


def _same_origin(origin: str, host_header: str) -> bool:
    try:
        parts = urlsplit(origin)
        return (
            parts.scheme in ("http", "https")
            and parts.hostname == host_name(host_header, with_port=True)
            and (parts.port or (443 if parts.scheme == "https" else 80)) == (urlsplit("//" + host_header.strip()).port or 80)
        )
    except ValueError:  # malformed port
        return False


def host_name(value: str, with_port: bool = False) -> str:
    """The lower-case host name of a ``Host`` header or an address: no port, brackets or
    trailing dot."""
    value = value.strip().lower()
    if with_port or value.startswith("["):
        try:
            value = urlsplit("//" + value).hostname or ""
        except ValueError:
            return ""
    return value.rstrip(".")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def reachable_urls(host: str, port: int) -> list[str]:
    """URLs other machines can use to reach a server bound to ``host:port`` (its address,
    or for a wildcard bind this machine's network addresses, else its name)."""
    hosts = [host]
    if host in WILDCARDS:
        hosts = _network_addresses(socket.AF_INET6 if host == "::" else socket.AF_INET) or [socket.gethostname()]
    return [f"http://{f'[{h}]' if ':' in h else h}:{port}/" for h in hosts]


def _network_addresses(family: int) -> list[str]:
    """This machine's non-loopback addresses: the one outgoing traffic would use (a UDP
    connect sends nothing), then those its name resolves to."""
    found = []
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(("2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1", 9))  # documentation ranges
            found.append(s.getsockname()[0])
    except OSError:
        pass
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, family)]
    except OSError:
        pass
    return [a for a in dict.fromkeys(found) if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
