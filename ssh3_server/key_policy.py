"""From a matched authorized_keys line or certificate to what the login may do.

sshd's rules (auth-options.c, auth2-pubkey.c): a line whose ``from=`` does not match
the client, whose ``expiry-time`` has passed, or that demands FIDO user verification
does not authenticate (the next line with the same key may); a line that matches
narrows the server's Permissions, never widens them. A certificate narrows them
again through its extensions and critical options.
"""

from __future__ import annotations

import time
from typing import Any

from ssh3.auth.certificates import CertificateGrant
from ssh3.auth.key_options import KeyOptions, match_from

from .permissions import Permissions


def refusal_of_line(options: KeyOptions, client_address: str,
                    now: float | None = None) -> str | None:
    """Why this line may not authenticate the client, or None if it may."""
    if options.expiry_time is not None and (time.time() if now is None else now) \
            >= options.expiry_time:
        return "key expired (expiry-time)"
    if options.from_patterns is not None and not match_from(options.from_patterns,
                                                            client_address):
        return "client address not allowed by from="
    if options.verify_required:
        return "verify-required needs a FIDO key"
    return None


def narrow_by_options(base: Permissions, options: KeyOptions,
                      permit_user_environment: bool) -> Permissions:
    """*base* narrowed by one line's options."""
    return _narrowed(
        base, options.permit_pty, options.permit_agent_forwarding,
        options.permit_port_forwarding,
        permit_open=_intersect(base.permit_open, options.permit_open),
        permit_listen=_intersect(base.permit_listen, options.permit_listen),
        forced_command=options.command if options.command is not None
        else base.forced_command,
        environment=(base.environment + options.environment if permit_user_environment
                     else base.environment),
    )


def narrow_by_certificate(base: Permissions, grant: CertificateGrant) -> Permissions:
    """*base* (already narrowed by the cert-authority line, if any) narrowed by the
    certificate. Two different forced commands refuse the login (ValueError), as sshd."""
    forced = base.forced_command
    if grant.force_command is not None:
        if forced is not None and forced != grant.force_command:
            raise ValueError("certificate and key options force different commands")
        forced = grant.force_command
    return _narrowed(base, grant.permit_pty, grant.permit_agent_forwarding,
                     grant.permit_port_forwarding, forced_command=forced)


def _narrowed(base: Permissions, pty: bool, agent_forwarding: bool, port_forwarding: bool,
              **more: Any) -> Permissions:
    """*base* narrowed by the flags a key line and a certificate both carry (pty,
    agent and port forwarding), and by *more* (other Permissions fields)."""
    return base.narrowed(
        allow_pty=base.allow_pty and pty,
        allow_agent_forwarding=base.allow_agent_forwarding and agent_forwarding,
        # no-port-forwarding: every kind (-L/-D/-W, -R, and ssh3's UDP forwarding)
        allow_tcp_forwarding=base.allow_tcp_forwarding and port_forwarding,
        allow_udp_forwarding=base.allow_udp_forwarding and port_forwarding,
        allow_remote_forwarding=base.allow_remote_forwarding and port_forwarding,
        **more,
    )


def _intersect(base: tuple | None, extra: tuple | None) -> tuple | None:
    """A narrowed allow-list: the server's (None: anything) and the line's."""
    if extra is None:
        return base
    if base is None:
        return extra
    return tuple(entry for entry in extra if entry in base)
