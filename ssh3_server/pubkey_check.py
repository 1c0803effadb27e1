"""One public-key login attempt: the JWT (and the certificate in its header, if any)
against the user's authorized_keys lines and the trusted CAs.

Order, as sshd tries a certificate before the plain key: a token carrying an
``ssh3-cert`` header is first checked as a certificate login; if the certificate is
refused, the key that signed the token is still looked up as a plain key (the reason
of both refusals is logged). See docs/certificates.md and docs/authorized-keys.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssh3.auth.authorized_keys import PublicKeyIdentity
from ssh3.auth.certificates import (
    HEADER_FIELD,
    CertificateError,
    CertificateGrant,
    check_certificate,
    decode_header_value,
    fingerprint_of_blob,
    key_blob,
    parse_certificate_blob,
)
from ssh3.auth.jwt_token import TokenError, token_header, verify_token

from .key_policy import narrow_by_certificate, narrow_by_options, refusal_of_line
from .permissions import Permissions

# Keys nobody holds, one per JWT algorithm: an attempt for an unknown user verifies
# its token against one of them, so it costs what a real user's attempt costs
# (RSA: 3072 bits, ssh-keygen's default size).
_DUMMY_KEY_LINES = {
    "EdDSA": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbj8R6ad46PaXAC8FX4FPHJvUpph63f2B5JVbWgJHJO",
    "ES256": "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBC84wInf"
             "+ZW804DES5RkNtIePuPkH2+HNJX3JncYm8cNTbsKjDvb9ZCrpu1gZqp0Ndr4dVbXsCaMCeDgULMKWFQ=",
    "ES384": "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBKy0a+Lk"
             "mrXQbIgcoDC3XB7cN2BiUpGdZwiO0utZD0A4JSAF3+QwNm5rfkWCsIF0sxUYAYHwIIwtMOOnGJ+xFHby"
             "5uv6b26mhfmP+BiD20RL+HltZR032Bk1bkQPAKXCXA==",
    "RS256": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCLNJkZzkHNGdNlAY67L4GgdOFWWjZlqi28pin9PwM4"
             "BL91JwHlRBV14GZULNMNzdQf4Lp7jE0j/TGaTZM1Bn47ybo455LoW6A8838P0TBwmfsyVp2R4U7s0OT+"
             "LhRR5y7lK7Icb3TQX8aUIDxujqVn1pJu5Xg05/uykjST8lbOsUgFrpyjmlXwMRA8aYoyaSrZXHoHj4Up"
             "0MNu78AIaL/01/5UHs8kWPgyfK3ljZ6OFPv3+3/9BfC3KwYtgbWYtDjgXn0ju0BKB87ZhJKLBH3gR0pF"
             "CaFlgp+6JwW4qOXoZUtUiMzWXLb42xpyW4o5SK5FC1tTWfFEvxc8Bf7/HCmvQUJv2vlG2O+715LGAjA3"
             "UyCteDF+Z9XU1uX1RARHHpfU8nZ4pPiNbDI4eopy+b01426xX/dL9HhV0W5eA11SrWO+ImKYe173NvIr"
             "82B5ckKfAVgxZEyCuNoHkx6nf7J36G8vnbKesD6yMeljCR27MEqMkwONZAWmDCFmZzzsTO8=",
}

def dummy_verification(token: str, conversation_id: bytes, base: Permissions,
                       trusted_cas: set[bytes]) -> None:
    """The unknown-user path: the same steps as a real check (an identity line is
    parsed, the token verified), against a key nobody holds."""
    try:
        alg = token_header(token).get("alg")
    except TokenError:
        return  # a real user's malformed token is refused just as early
    line = _DUMMY_KEY_LINES.get(alg) if isinstance(alg, str) else None
    if line is None:
        return
    from ssh3.auth.authorized_keys import parse_identities

    identities, _ = parse_identities(line + " dummy\n", "dummy")
    lines = [i for i in identities if isinstance(i, PublicKeyIdentity)]
    PublicKeyCheck(token, "", conversation_id, "", base, False).run(lines, trusted_cas)


@dataclass
class CheckResult:
    permissions: Permissions | None  # None: refused
    reason: str = ""
    fingerprint: str = "-"
    detail: str = ""  # for the audit line (certificate id, CA)


class PublicKeyCheck:
    def __init__(self, token: str, user: str, conversation_id: bytes, client_address: str,
                 base: Permissions, permit_user_environment: bool) -> None:
        self.token = token
        self.user = user
        self.conversation_id = conversation_id
        self.client_address = client_address
        self.base = base
        self.permit_user_environment = permit_user_environment

    def run(self, lines: list[PublicKeyIdentity], trusted_cas: set[bytes]) -> CheckResult:
        try:
            header = token_header(self.token)
        except TokenError as exc:
            return CheckResult(None, str(exc))
        cert_result: CheckResult | None = None
        if HEADER_FIELD in header:
            cert_result = self._by_certificate(header[HEADER_FIELD], lines, trusted_cas)
            if cert_result.permissions is not None:
                return cert_result
        plain = self._by_plain_key([i for i in lines if not i.options.cert_authority])
        if plain.permissions is None and cert_result is not None:
            plain.reason = f"certificate refused: {cert_result.reason}; plain key: {plain.reason}"
            plain.detail = cert_result.detail
            if plain.fingerprint == "-":
                plain.fingerprint = cert_result.fingerprint
        return plain

    def _narrow(self, line: PublicKeyIdentity | None) -> Permissions:
        if line is None:
            return self.base
        return narrow_by_options(self.base, line.options, self.permit_user_environment)

    # ------------------------------------------------------------ plain keys

    def _by_plain_key(self, lines: list[PublicKeyIdentity]) -> CheckResult:
        by_blob: dict[bytes, object] = {}
        for line in lines:
            by_blob.setdefault(key_blob(line.public_key), line.public_key)
        try:
            matched = verify_token(self.token, by_blob.values(), self.user,
                                   self.conversation_id)
        except TokenError as exc:
            return CheckResult(None, str(exc))
        blob = key_blob(matched)
        fingerprint = fingerprint_of_blob(blob)
        first_refusal = ""
        # sshd: the first line with this key whose options admit the client wins
        for line in lines:
            if key_blob(line.public_key) != blob:
                continue
            refusal = refusal_of_line(line.options, self.client_address)
            if refusal is None:
                return CheckResult(self._narrow(line), fingerprint=fingerprint,
                                   detail=f"line={line.source}:{line.line_number}")
            first_refusal = first_refusal or f"{refusal} ({line.source}:{line.line_number})"
        return CheckResult(None, first_refusal, fingerprint)

    # ------------------------------------------------------------ certificates

    def _by_certificate(self, value: object, lines: list[PublicKeyIdentity],
                        trusted_cas: set[bytes]) -> CheckResult:
        try:
            blob = decode_header_value(value)
            cert = parse_certificate_blob(blob)
            ca = key_blob(cert.signature_key())
            fingerprint = fingerprint_of_blob(key_blob(cert.public_key()))
        except (CertificateError, ValueError) as exc:
            return CheckResult(None, str(exc))
        # where trust in this CA may come from, in sshd's order: TrustedUserCAKeys,
        # then the cert-authority lines (each with its own principals= and options)
        sources: list[tuple[PublicKeyIdentity | None, set[str]]] = []
        if ca in trusted_cas:
            sources.append((None, {self.user}))
        first_refusal = ""
        for line in lines:
            if not line.options.cert_authority or key_blob(line.public_key) != ca:
                continue
            refusal = refusal_of_line(line.options, self.client_address)
            if refusal is not None:
                first_refusal = first_refusal or f"{refusal} ({line.source}:{line.line_number})"
                continue
            principals = line.options.principals
            sources.append((line, set(principals) if principals is not None else {self.user}))
        if not sources:
            return CheckResult(None, first_refusal or
                               f"CA {fingerprint_of_blob(ca)} is not trusted", fingerprint)
        grant: CertificateGrant | None = None
        source: PublicKeyIdentity | None = None
        for line, principals in sources:
            try:
                grant = check_certificate(blob, user=self.user,
                                          client_address=self.client_address,
                                          trusted_cas={ca: principals})
                source = line
                break
            except CertificateError as exc:
                first_refusal = first_refusal or str(exc)
        if grant is None:
            return CheckResult(None, first_refusal, fingerprint)
        detail = grant.describe() + (f" line={source.source}:{source.line_number}"
                                     if source is not None else " (trusted CA file)")
        try:
            verify_token(self.token, [grant.public_key], self.user, self.conversation_id)
        except TokenError as exc:
            return CheckResult(None, str(exc), fingerprint, detail)
        try:
            permissions = narrow_by_certificate(self._narrow(source), grant)
        except ValueError as exc:
            return CheckResult(None, str(exc), fingerprint, detail)
        return CheckResult(permissions, fingerprint=fingerprint, detail=detail)
