"""Checking the server's certificate against ~/.ssh3/known_hosts, with trust on
first use (PROTOCOL.md §1.5), before any credential is sent."""

from __future__ import annotations

import os
import sys

from ssh3.aio.client import HostKeyError
from ssh3.certs import fingerprint, is_self_signed_ca, verify_chain
from ssh3.known_hosts import KnownHosts, mismatch_message

STRICT_YES = "yes"
STRICT_ACCEPT_NEW = "accept-new"
STRICT_ASK = "ask"
STRICT_NO = "no"


def _ask_yes_no(question: str) -> bool | None:
    """Ask on the controlling terminal; None if there is none."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    with open(fd, "r+b", buffering=0) as tty:
        tty.write(question.encode())
        while True:
            answer = tty.readline().decode(errors="replace").strip().lower()
            if answer in ("yes", "y"):
                return True
            if answer in ("no", "n", ""):
                return False
            tty.write(b"Please type 'yes' or 'no': ")


class HostKeyVerifier:
    def __init__(self, known_hosts_path: str, canonical_host: str,
                 strict: str = STRICT_ASK, hostname: str | None = None,
                 ca_bundle: str | None = None) -> None:
        self.path = known_hosts_path
        self.host = canonical_host
        self.strict = strict
        self.hostname = hostname  # for verification against the system's CAs
        self.ca_bundle = ca_bundle

    async def __call__(self, der: bytes, chain: list[bytes] | None = None) -> None:
        known = KnownHosts.load(self.path)
        for warning in known.warnings:
            print(f"ssh3: warning: {warning}", file=sys.stderr)
        state = known.check(self.host, der)
        if state == "match":
            return
        if state == "mismatch":
            lines = [e.line_number for e in known.entries_for(self.host)]
            raise HostKeyError(mismatch_message(self.path, self.host, lines, der))
        # unknown host: a certificate from a CA the system trusts is fine as is
        # (like the reference, which adds known_hosts to the system roots)
        ca_error = (verify_chain(der, chain or [], self.hostname, self.ca_bundle)
                    if self.hostname else "no host name to verify")
        if ca_error is None:
            return
        if self.strict == STRICT_NO:
            known.add(self.host, der)
            return
        if not is_self_signed_ca(der):
            raise HostKeyError(
                f"the certificate of {self.host} does not verify ({ca_error}) and is not a "
                "self-signed certificate that could be trusted on first use: use a "
                "certificate from a CA you trust, or -insecure for testing")
        print_fp = fingerprint(der)
        if self.strict == STRICT_ACCEPT_NEW:
            known.add(self.host, der)
            print(f"ssh3: permanently added {self.host} ({print_fp}) to {self.path}",
                  file=sys.stderr)
            return
        if self.strict == STRICT_YES:
            raise HostKeyError(
                f"no certificate known for {self.host} in {self.path} and strict checking is "
                "on: connect once interactively, or use -o StrictHostKeyChecking=accept-new")
        answer = _ask_yes_no(
            f"The authenticity of host '{self.host}' can't be established.\r\n"
            f"Its certificate fingerprint is {print_fp}.\r\n"
            "Are you sure you want to continue connecting (yes/no)? ")
        if answer is None:
            raise HostKeyError(
                f"the certificate of {self.host} ({print_fp}) is not in {self.path} and there "
                "is no terminal to ask: connect once interactively, or use "
                "-o StrictHostKeyChecking=accept-new")
        if not answer:
            raise HostKeyError("host certificate verification failed: not accepted")
        known.add(self.host, der)
        print(f"ssh3: permanently added {self.host} to {self.path}", file=sys.stderr)
