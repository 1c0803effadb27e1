"""Batched sends with UDP generic segmentation offload (Linux, UDP_SEGMENT).

Python's stdlib has no sendmmsg, but one `sendmsg` with a UDP_SEGMENT control
message hands the kernel a buffer of equal-sized packets (the last may be shorter)
that it splits itself: one system call for up to 64 packets instead of one each.
aioquic's protocol sends every packet with its own `sendto` (about 40% of a bulk
sender's time); `GsoSender` collects the packets of one `transmit` and sends them in
such batches. qh3 needs none of this: its client and (with qh3_server.py) server
transports do the same natively.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

UDP_SEGMENT = 103  # linux/udp.h
MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS
MAX_BYTES = 65000  # a GSO buffer is one UDP datagram for the kernel: under 64 KiB
_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_SEGMENT = struct.Struct("=H")


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel takes UDP_SEGMENT on this socket (set, then cleared: only
    per-message control data must segment, never the socket's own sends)."""
    if not hasattr(socket, "CMSG_SPACE"):
        return False
    try:
        sock.setsockopt(_SOL_UDP, UDP_SEGMENT, 1200)
        sock.setsockopt(_SOL_UDP, UDP_SEGMENT, 0)
        return True
    except OSError:
        return False


def _groups(datagrams: list[bytes]) -> list[list[bytes]]:
    """Runs of packets a single GSO send can carry: equal sizes, of which only the
    last may be shorter, at most MAX_SEGMENTS and MAX_BYTES."""
    groups: list[list[bytes]] = []
    group: list[bytes] = []
    size = total = 0
    for d in datagrams:
        n = len(d)
        if group and (n > size or len(group) >= MAX_SEGMENTS or total + n > MAX_BYTES
                      or len(group[-1]) < size):
            groups.append(group)
            group = []
        if not group:
            size, total = n, 0
        group.append(d)
        total += n
    if group:
        groups.append(group)
    return groups


class GsoSender:
    """Stands in for a protocol's datagram transport: between `hold()` and
    `flush()` its `sendto` collects packets, which `flush` sends in GSO batches;
    otherwise (and for whatever the socket cannot take now) the real transport's
    `sendto` is used, so its queue and back-pressure still apply."""

    def __init__(self, transport: Any, sock: socket.socket, owned: bool) -> None:
        self._transport = transport
        self._sock = sock
        self._owned = owned  # our dup of the transport's socket: closed by `close`
        self._held: list[bytes] | None = None
        self._addr: Any = None
        self.enabled = True

    @classmethod
    def wrap(cls, transport: Any) -> GsoSender | None:
        """A GsoSender for this transport's socket, or None if GSO is unavailable."""
        own = getattr(transport, "gso_socket", None)
        if own is not None:  # batched_udp's transport: its socket, shared
            sock = own()
            return None if sock is None else cls(transport, sock, owned=False)
        tsock = transport.get_extra_info("socket")
        if tsock is None or tsock.type != socket.SOCK_DGRAM:
            return None
        # asyncio hands out a restricted wrapper; a dup of the descriptor is a
        # full socket on the same open file (same port, same queue)
        sock = socket.socket(tsock.family, tsock.type, tsock.proto, fileno=os.dup(tsock.fileno()))
        if not gso_supported(sock):
            sock.close()
            return None
        return cls(transport, sock, owned=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def hold(self) -> None:
        self._held = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        held = self._held
        if held is None:
            self._transport.sendto(data, addr)
            return
        if held and addr != self._addr:
            self._send(held, self._addr)
            held = self._held = []
        held.append(data)
        self._addr = addr

    def flush(self) -> None:
        held, self._held = self._held, None
        if held:
            self._send(held, self._addr)

    def _send(self, datagrams: list[bytes], addr: Any) -> None:
        sent = 0
        if self.enabled and addr is not None and not self._transport.get_write_buffer_size():
            sent = self._send_gso(datagrams, addr)
        for d in datagrams[sent:]:  # the rest through the transport (queued in order)
            self._transport.sendto(d, addr)

    def _send_gso(self, datagrams: list[bytes], addr: Any) -> int:
        sent = 0
        for group in _groups(datagrams):
            try:
                if len(group) == 1:
                    self._sock.sendto(group[0], addr)
                else:
                    self._sock.sendmsg([b"".join(group)],
                                       [(_SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(len(group[0])))],
                                       0, addr)
            except (BlockingIOError, InterruptedError):
                return sent
            except OSError:
                # e.g. EIO when the device cannot segment: plain sends from now on
                self.enabled = False
                return sent
            sent += len(group)
        return sent

    def close(self) -> None:
        if self._owned:
            self._sock.close()
