"""TLS 1.3 exporter (RFC 8446 §7.5) for QUIC libraries that lack an API for it.

The conversation ID of SSH3 is TLS-Exporter("EXPORTER-SSH3", "", 32) (PROTOCOL.md §1.6).
aioquic and qh3 both run the TLS handshake in Python with the same key-schedule
object; the exporter master secret can only be derived while the transcript covers
exactly ClientHello..server Finished, which is the moment the server application
traffic secret ("s ap traffic") is set up. We wrap that method to capture it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from types import ModuleType
from typing import Any

EXPORTER_LABEL = b"EXPORTER-SSH3"
CONVERSATION_ID_LENGTH = 32

_ATTR = "_ssh3_exporter_master"


def _hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes,
                       length: int) -> bytes:
    full_label = b"tls13 " + label
    info = (struct.pack("!H", length) + bytes([len(full_label)]) + full_label
            + bytes([len(context)]) + context)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([counter]), hash_name).digest()
        out += block
        counter += 1
    return out[:length]


def export_keying_material(exporter_master_secret: bytes, label: bytes, length: int) -> bytes:
    """RFC 8446 §7.5 with an empty context; the hash follows the secret's size."""
    hash_name = {32: "sha256", 48: "sha384", 64: "sha512"}[len(exporter_master_secret)]
    empty = hashlib.new(hash_name, b"").digest()
    derived = _hkdf_expand_label(hash_name, exporter_master_secret, label, empty, len(empty))
    return _hkdf_expand_label(hash_name, derived, b"exporter", empty, length)


def install(tls_module: ModuleType) -> None:
    """Wrap `tls_module.Context._setup_traffic_protection` once."""
    context_class = tls_module.Context
    original = context_class._setup_traffic_protection
    if getattr(original, "_ssh3_wrapped", False):
        return

    def wrapper(self: Any, direction: Any, epoch: Any, label: bytes) -> Any:
        if label == b"s ap traffic" and getattr(self, _ATTR, None) is None:
            setattr(self, _ATTR, self.key_schedule.derive_secret(b"exp master"))
        return original(self, direction, epoch, label)

    wrapper._ssh3_wrapped = True  # type: ignore[attr-defined]
    context_class._setup_traffic_protection = wrapper


def conversation_id(quic: Any) -> bytes | None:
    """The 32-byte conversation ID of a QUIC connection, once its handshake allows."""
    tls = getattr(quic, "tls", None)  # an aioquic server creates it on its first packet
    secret = getattr(tls, _ATTR, None) if tls is not None else None
    if secret is None:
        return None
    return export_keying_material(secret, EXPORTER_LABEL, CONVERSATION_ID_LENGTH)
