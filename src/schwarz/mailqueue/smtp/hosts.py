"""Several smarthosts: the ordered host list of ``smtp_hostname`` and which of them rest after a failure.

``smtp_hostname = a.example:587, b.example:587`` lists the hosts in order of
preference. A host whose connection failed (refused, timed out, TLS handshake,
no greeting) rests for a while: the next connections start with the hosts that
did not fail. ``HostHealth`` is one small object shared by every clone of a
transport, so the runner's workers learn from each other's failures.

Pure apart from the clock: no sockets here.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ['DEFAULT_REST', 'Host', 'HostHealth', 'format_host', 'parse_hosts']

Host = Tuple[str, int]

# How long a host that failed is passed over (tried last) before it is preferred again.
DEFAULT_REST = 120.0


def _port(text: str, entry: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f'invalid port in {entry!r} (1 to 65535)')
    return int(text)


def parse_hosts(value: str, default_port: int = 25) -> List[Host]:
    """``'a.example:587, [2001:db8::1]:25, b.example'`` -> ``[(name, port), ...]`` (order kept).

    Commas or whitespace separate the hosts; an IPv6 literal needs brackets when it
    carries a port. ``ValueError`` for an empty list, a bad port or a duplicate.
    """
    entries = [e for e in value.replace(',', ' ').split() if e]
    if not entries:
        raise ValueError('no host name given')
    hosts: List[Host] = []
    for entry in entries:
        if entry.startswith('['):
            name, bracket, rest = entry[1:].partition(']')
            if not bracket or not name or (rest and not rest.startswith(':')):
                raise ValueError(f'invalid host {entry!r} (an IPv6 address with a port is written [addr]:port)')
            port = _port(rest[1:], entry) if rest else default_port
        elif entry.count(':') == 1:
            name, _, port_text = entry.partition(':')
            if not name:
                raise ValueError(f'invalid host {entry!r}')
            port = _port(port_text, entry)
        else:
            name, port = entry, default_port  # a name, or a bare IPv6 literal without a port
        if any(ord(ch) < 33 or ch in '/\\@' for ch in name):
            raise ValueError(f'invalid host name {name!r}')
        if (name.lower(), port) in {(h.lower(), p) for h, p in hosts}:
            raise ValueError(f'{name}:{port} is listed twice')
        hosts.append((name, port))
    return hosts


def format_host(host: Host) -> str:
    name, port = host
    return f'[{name}]:{port}' if ':' in name else f'{name}:{port}'


class HostHealth:
    """Which hosts failed recently; thread-safe, shared between a transport and its clones."""

    def __init__(self, rest: float = DEFAULT_REST, clock: Callable[[], float] = time.monotonic) -> None:
        self.rest = rest
        self.clock = clock
        self._until: Dict[Host, float] = {}
        self._lock = threading.Lock()

    def order(self, hosts: Sequence[Host]) -> List[Host]:
        """The hosts to try, in order: the rested ones as configured, then those still resting.

        A resting host is still tried when every host before it failed too: with all of
        them down, the one that comes back first must be found.
        """
        now = self.clock()
        with self._lock:
            resting = {h for h in hosts if self._until.get(h, 0.0) > now}
        return [h for h in hosts if h not in resting] + [h for h in hosts if h in resting]

    def failed(self, host: Host) -> None:
        with self._lock:
            self._until[host] = self.clock() + self.rest

    def succeeded(self, host: Host) -> bool:
        """Record a working connection; True when the host had been failing (it is back)."""
        with self._lock:
            return self._until.pop(host, None) is not None

    def resting(self, host: Host) -> bool:
        with self._lock:
            return self._until.get(host, 0.0) > self.clock()

    def resting_until(self, host: Host) -> Optional[float]:
        with self._lock:
            until = self._until.get(host)
        return until if until is not None and until > self.clock() else None
