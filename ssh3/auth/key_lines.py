"""The key blob of a one-line public key text (``type base64 [comment]``: a ``.pub``
or ``-cert.pub`` file). Read by the client (its identities and their certificates)
and by the certificate code; only light imports, so the client starts fast.
"""

from __future__ import annotations

import base64
import binascii


def key_line_blob(text: bytes) -> bytes | None:
    """The blob of the first line that is not blank or a comment, when it decodes and
    names its own type (the blob's leading string); None otherwise."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith(b"#"):
            continue
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except (binascii.Error, ValueError):
            return None
        n = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
        if n < 0 or len(blob) < 4 + n or blob[4 : 4 + n] != fields[0]:
            return None
        return blob
    return None
