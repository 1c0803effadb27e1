"""Password login (HTTP Basic, PROTOCOL.md §2.4.1), checked through PAM.

PAM makes the server follow the host's own policy (pam_unix, LDAP or SSSD, account
expiry through pam_acct_mgmt). The service name is "ssh3": without an
/etc/pam.d/ssh3 file, PAM uses /etc/pam.d/other, the system's common stacks. A
service such as "su" must never be used: its pam_rootok accepts any password when
the caller is root, which the server is.
"""

from __future__ import annotations

import base64
import binascii

PAM_SERVICE = "ssh3"
MAX_PASSWORD_LENGTH = 1024


def parse_basic(authorization: str) -> tuple[str, str] | None:
    """(user, password) from `Basic base64(user:password)`, or None if malformed."""
    if not authorization.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep or len(password) > MAX_PASSWORD_LENGTH:
        return None
    try:
        return user.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        return None


def basic_authorization(user: str, password: str) -> str:
    raw = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def check_password(user: str, password: str, service: str = PAM_SERVICE) -> bool:
    """Blocking (PAM may take a while on purpose): call it from a worker thread.
    Run it for unknown users too, so that both cases take the same time."""
    import pam  # python-pam: ctypes binding of libpam, loaded only when needed

    handle = pam.pam()
    return bool(handle.authenticate(user, password, service=service, resetcreds=False))
