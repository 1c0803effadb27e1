"""Client side of TCP and UDP forwarding as the `ssh3` program sees it: the -L,
-forward-tcp and -forward-udp flags, the set of forwarders of one run, and -N.

The forwarders themselves live in `ssh3.forward` (the library layer, shared with
`Connection.forward_local_port` and friends); their names are re-exported here for
the program's other modules. See docs/forwarding.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import sys
from typing import Any, Literal

from ssh3.aio.conversation import Conversation
from ssh3.forward import (  # noqa: F401 - re-exported for socks, stdio_forward, escape
    MAX_UDP_FLOWS,
    UDP_IDLE_TIMEOUT,
    UDP_SEND_BUFFER_LIMIT,
    ForwardError,
    ForwardSpec,
    Report,
    TcpForwarder,
    UdpForwarder,
    _finish,
    _os_reason,
    _TcpRelay,
    host_port,
    resolve,
    send_fin,
)

KEEPALIVE_INTERVAL = 10.0


def _port(text: str, spec: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ForwardError(f"bad port {text!r} in {spec!r}") from None
    if not 0 < port < 65536:
        raise ForwardError(f"bad port {text!r} in {spec!r}")
    return port


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def parse_reference_spec(text: str, protocol: Literal["tcp", "udp"]) -> ForwardSpec:
    """The reference's `localport/remoteip@remoteport`. Like the reference, listen on
    127.0.0.1, or on [::1] when the remote address is IPv6."""
    flag = f"-forward-{protocol}"
    lport, slash, rest = text.partition("/")
    rip, at, rport = rest.rpartition("@")
    if not slash or not at or not rip:
        raise ForwardError(f"bad {flag} {text!r}: expected localport/remoteip@remoteport")
    rip = rip.strip("[]")
    try:
        ipaddress.ip_address(rip)
    except ValueError:
        raise ForwardError(f"bad {flag} {text!r}: {rip!r} is not an IP address") from None
    listen = "::1" if _is_ipv6(rip) else "127.0.0.1"
    return ForwardSpec(protocol, listen, _port(lport, text), rip, _port(rport, text), text)


def _split_colons(text: str) -> list[str]:
    """Split on ':' outside square brackets; brackets are removed."""
    parts: list[str] = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == ":" and depth == 0:
            parts.append(current)
            current = ""
            continue
        else:
            current += ch
            continue
        if depth not in (0, 1):
            raise ForwardError(f"bad brackets in {text!r}")
    if depth:
        raise ForwardError(f"bad brackets in {text!r}")
    return [*parts, current]


def parse_local_forward(text: str) -> ForwardSpec:
    """OpenSSH's `-L [bind_address:]port:host:hostport`. Without a bind address we
    listen on 127.0.0.1 (OpenSSH's GatewayPorts=no); an empty one or `*` means every
    interface."""
    parts = _split_colons(text)
    if len(parts) == 3:
        bind: str | None = "127.0.0.1"
        lport, host, hport = parts
    elif len(parts) == 4:
        bind, lport, host, hport = parts
        if bind in ("", "*"):
            bind = None
    else:
        raise ForwardError(f"bad -L {text!r}: expected [bind_address:]port:host:hostport")
    if not host:
        raise ForwardError(f"bad -L {text!r}: no target host")
    return ForwardSpec("tcp", bind, _port(lport, text), host, _port(hport, text), text)


def _stderr(text: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"ssh3: {text}\n")
        sys.stderr.flush()


# ---------------------------------------------------------------- all of them


class Forwarding:
    """Every forwarder of one client run, plus a keep-alive, as an async context:
    they all stop when it exits."""

    def __init__(self, conv: Conversation, specs: list[ForwardSpec],
                 report: Report = _stderr, keepalive: float = KEEPALIVE_INTERVAL) -> None:
        self.conv = conv
        self.specs = specs
        self.report = report
        self.keepalive = keepalive
        self.forwarders: list[TcpForwarder | UdpForwarder] = []
        self._keepalive_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Forwarding:
        try:
            for spec in self.specs:
                target = await resolve(spec)
                forwarder: TcpForwarder | UdpForwarder
                if spec.protocol == "tcp":
                    forwarder = TcpForwarder(self.conv, spec, target, self.report)
                else:
                    forwarder = UdpForwarder(self.conv, spec, target, self.report)
                await forwarder.start()
                self.forwarders.append(forwarder)
        except BaseException:
            await self.close()
            raise
        if self.specs and self.keepalive > 0:
            self._keepalive_task = asyncio.ensure_future(self._keep_alive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _keep_alive(self) -> None:
        """Forwarded connections can be quiet for long: keep the QUIC connection
        from reaching its idle timeout (the reference pings every second, Q23)."""
        protocol: Any = self.conv.protocol
        while not protocol.terminated.is_set():
            await asyncio.sleep(self.keepalive)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(protocol.ping(), self.keepalive)

    async def close(self) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive_task
        for forwarder in self.forwarders:
            await forwarder.close()
        self.forwarders.clear()


async def forward_until_stopped(conv: Conversation, report: Report = _stderr) -> int:
    """-N: nothing but forwarding, until SIGINT/SIGTERM (exit 0) or until the
    connection or conversation ends (exit 255)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    protocol: Any = conv.protocol
    waiters = [asyncio.ensure_future(e.wait())
               for e in (stop, conv.ended, protocol.terminated)]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    if stop.is_set():
        return 0
    reason = conv.end_reason or "connection closed"
    report(f"the connection ended: {reason}")
    return 255
