"""Start-up cost: `ssh3 host true` loads only what it uses (`python -X importtime`),
so that a command over a fresh connection stays quick. No timings are asserted:
the lists of modules loaded are."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

# never needed by a plain `ssh3 host cmd` (they serve -L/-D/-W or a name check the
# client does not do: it pins certificates against known_hosts itself)
NOT_FOR_A_PLAIN_RUN = {"ssh3_client.socks", "ssh3_client.stdio_forward", "attr",
                       "service_identity.cryptography", "idna"}


def _imported(argv: list[str], env: dict[str, str] | None = None) -> set[str]:
    run_env = dict(env or os.environ)
    run_env["PYTHONPROFILEIMPORTTIME"] = "1"
    r = subprocess.run(argv, env=run_env, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    return {m.decode() for m in re.findall(rb"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$",
                                          r.stderr, re.M)}


def test_cli_module_imports_no_event_loop_or_crypto():
    mods = _imported([sys.executable, "-c", "import ssh3_client.cli"])
    assert "ssh3_client.cli" in mods
    assert not {"asyncio", "cryptography", "aioquic", "qh3"} & mods


def test_print_config_runs_without_asyncio():
    """`ssh -G` is what git runs to probe its ssh: it must not pay for the stack."""
    mods = _imported([sys.executable, "-m", "ssh3_client.cli", "-F", "none", "-G", "example"])
    assert "ssh3_client.config" in mods
    assert not {"asyncio", "cryptography", "aioquic", "qh3"} & mods


def test_aioquic_backend_defers_service_identity():
    code = ("import sys; from ssh3.backends import get_backend; get_backend('aioquic'); "
            "assert 'attr' not in sys.modules, 'service_identity loaded at import'; "
            "import aioquic.tls as t; "
            # whoever uses it gets the real module, loaded on first use
            "assert t.service_identity.VerificationError.__name__ == 'VerificationError'; "
            "assert t.service_identity.cryptography.verify_certificate_hostname; "
            "import service_identity; assert service_identity.hazmat; "
            "assert 'attr' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("backend", ["aioquic", "qh3"])
def test_plain_command_loads_only_what_it_uses(shared_server, make_client, backend):
    client = make_client(backend, trust=shared_server)
    mods = _imported(client.argv(shared_server, "true"), client.env())
    # (the backend module itself is loaded by importlib.import_module, which
    # -X importtime does not list; the QUIC library it imports is listed)
    assert {"ssh3_client.cli", "ssh3.aio.client", backend} <= mods
    assert not NOT_FOR_A_PLAIN_RUN & mods, NOT_FOR_A_PLAIN_RUN & mods
    other = "qh3" if backend == "aioquic" else "aioquic"
    assert other not in mods
    if backend == "qh3":
        # known_hosts matched: no X.509 parsing library beyond the Rust bindings
        # (aioquic.tls imports cryptography.x509 itself)
        assert not {"cryptography.x509", "email.utils"} & mods


def test_known_hosts_der_shape_check(tmp_path):
    """known_hosts lines are checked for the shape of a DER certificate without
    importing cryptography.x509; what a full parse refuses for its shape is refused."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    from ssh3.certs import generate_self_signed, load_certificate_der
    from ssh3.known_hosts import _parse_der_certificate

    generate_self_signed(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    ed = load_certificate_der(str(tmp_path / "c.pem"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([])
    now = datetime.datetime.now(datetime.UTC)
    rsa_der = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1))
               .sign(key, hashes.SHA256()).public_bytes(Encoding.DER))
    for der in (ed, rsa_der):  # short and long DER lengths
        _parse_der_certificate(der)
    bad = [b"", b"not der", ed[:-1], ed + b"\x00", b"\x31" + ed[1:],
           b"\x30\x81\x05" + b"\x30\x00\x30\x00\x03",  # length not in shortest form
           b"\x30\x06\x30\x00\x30\x00\x04\x00",  # OCTET STRING, not BIT STRING
           b"\x30\x04\x30\x00\x30\x00"]  # no signature
    for der in bad:
        with pytest.raises(ValueError):
            _parse_der_certificate(der)
        with pytest.raises(ValueError):
            x509.load_der_x509_certificate(der)
