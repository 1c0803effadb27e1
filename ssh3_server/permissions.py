"""What one authenticated login may do.

The server's flags give the widest grant; the options of the authorized_keys line
(or certificate) that admitted the user narrow it, never widen it. Sessions and
forwarding ask this object, so every policy decision has one source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# (host, port) an option allows; port None means any port ("host:*")
HostPort = tuple[str, int | None]


@dataclass(frozen=True)
class Permissions:
    allow_pty: bool = True
    allow_agent_forwarding: bool = True
    allow_tcp_forwarding: bool = True  # direct-tcp: -L, -D, -W
    allow_udp_forwarding: bool = True  # direct-udp: -forward-udp, proxy jump
    allow_remote_forwarding: bool = True  # -R
    # None: any destination; otherwise only these (authorized_keys permitopen=)
    permit_open: tuple[HostPort, ...] | None = None
    # None: any listen address; otherwise only these (authorized_keys permitlisten=)
    permit_listen: tuple[HostPort, ...] | None = None
    # authorized_keys command= / certificate force-command: replaces what the client asks
    forced_command: str | None = None
    # authorized_keys environment= (only kept when the server enables it)
    environment: tuple[tuple[str, str], ...] = ()

    def narrowed(self, **changes: object) -> Permissions:
        """A copy with `changes`; booleans can only go from True to False."""
        for name, value in changes.items():
            if isinstance(value, bool) and value and not getattr(self, name):
                raise ValueError(f"{name} cannot be widened")
        return replace(self, **changes)  # type: ignore[arg-type]

    def permits_open(self, host: str, port: int) -> bool:
        return self.allow_tcp_forwarding and _matches(self.permit_open, host, port)

    def permits_udp(self, host: str, port: int) -> bool:
        """direct-udp: the UDP flag, and the same permitopen= list as TCP (ssh3's
        UDP forwarding has no option of its own in sshd's vocabulary)."""
        return self.allow_udp_forwarding and _matches(self.permit_open, host, port)

    def permits_listen(self, host: str, port: int) -> bool:
        return self.allow_remote_forwarding and _matches(self.permit_listen, host, port)


def _matches(allowed: tuple[HostPort, ...] | None, host: str, port: int) -> bool:
    if allowed is None:
        return True
    host = host.lower()
    for want_host, want_port in allowed:
        if want_port is not None and want_port != port:
            continue
        if want_host == "*" or want_host.lower() == host:
            return True
    return False
