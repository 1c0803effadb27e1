"""OpenSSH's ConnectTimeout (`-o ConnectTimeout=N`, or the config file) for the
QUIC handshake. QUIC over UDP has no refusal a firewall would send back (no RST),
so without a bound a blocked port would hang the client: by default we give up
after DEFAULT seconds (OpenSSH has no default; its TCP connect has the kernel's)."""

from __future__ import annotations

DEFAULT = 15.0


class ConnectTimeoutError(ValueError):
    pass


def connect_timeout(options: dict[str, str]) -> float | None:
    """Seconds to wait for the server's first answer; None: no limit ("none" or 0,
    as in OpenSSH, where 0 also means the system default)."""
    text = options.get("connecttimeout", "").strip().lower()
    if not text:
        return DEFAULT
    if text == "none":
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise ConnectTimeoutError(f"bad ConnectTimeout {text!r}: expected seconds") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ConnectTimeoutError(f"bad ConnectTimeout {text!r}: expected seconds")
    return seconds or None
