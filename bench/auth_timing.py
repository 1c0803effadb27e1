"""Does a refused public-key login take as long for an unknown user as for a real one?

    PYTHONPATH=. python bench/auth_timing.py [--runs 50]

Runs the server's Authenticator in process (no network: the network would only add
noise to both sides equally) with tokens signed by a key that is in no
authorized_keys. Three cases per key type, attempts interleaved:

* known user: the current user, whose authorized_keys (a temporary file) holds one
  key of the same type, so one real signature verification fails;
* unknown user: a user name that does not exist (one dummy verification);
* unknown user without the dummy verification (what the server did before), to show
  what the dummy buys.

With --password-runs N, also a wrong password for the current user against any
password for an unknown user (PAM). Prints median and quartiles in microseconds.
Timings are not tests: they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssh3.auth.jwt_token import build_token  # noqa: E402
from ssh3_server.authenticate import Authenticator, AuthSettings  # noqa: E402
from ssh3_server.penalties import PenaltyBox, PenaltyPolicy  # noqa: E402
from ssh3_server.permissions import Permissions  # noqa: E402

CONV = bytes(range(32))
KEY_MAKERS = {
    "ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "rsa-3072": lambda: rsa.generate_private_key(65537, 3072),
}


def openssh_line(private: object) -> str:
    return private.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


async def measure(runs: int) -> None:
    me = getpass.getuser()
    logging.getLogger("ssh3").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'key type':12} {'case':32} {'median µs':>10} {'q1':>8} {'q3':>8}")
        for name, make in KEY_MAKERS.items():
            authorized = Path(tmp) / f"ak-{name}"
            authorized.write_text(openssh_line(make()) + " authorized\n")
            auth = Authenticator(
                AuthSettings(authorized_keys_files=[str(authorized)]),
                PenaltyBox(PenaltyPolicy(enabled=False)), Permissions(),
                running_as_root=True, own_user=me)
            stranger = make()
            tokens = {user: "Bearer " + build_token(stranger, user, CONV)  # type: ignore[arg-type]
                      for user in (me, "no-such-user-ssh3")}
            cases = {
                "known user (1 verification)": me,
                "unknown user (dummy verification)": "no-such-user-ssh3",
                "unknown user, no dummy (before)": "no-such-user-ssh3",
            }
            samples: dict[str, list[float]] = {case: [] for case in cases}
            real_dummy = auth._dummy_publickey
            for _ in range(runs + 5):  # 5 warm-up rounds, dropped
                for case, user in cases.items():
                    auth._dummy_publickey = (  # type: ignore[method-assign]
                        (lambda *_a: None) if "before" in case else real_dummy)
                    token = tokens[user].encode()
                    started = time.perf_counter()
                    login = await auth.authenticate(user, CONV, token, "bench", "")
                    samples[case].append((time.perf_counter() - started) * 1e6)
                    assert login is None
            for case, values in samples.items():
                values = values[5:]
                q1, med, q3 = statistics.quantiles(values, n=4)
                print(f"{name:12} {case:32} {med:10.0f} {q1:8.0f} {q3:8.0f}")


async def measure_password(runs: int) -> None:
    """A wrong password for the current user and any password for an unknown one,
    through PAM (Linux-PAM adds a randomised ~2 s delay to every failure)."""
    from ssh3.auth.password import basic_authorization

    me = getpass.getuser()
    auth = Authenticator(AuthSettings(enable_password_login=True),
                         PenaltyBox(PenaltyPolicy(enabled=False)), Permissions(),
                         running_as_root=True, own_user=me)
    samples: dict[str, list[float]] = {"known user, wrong password": [],
                                       "unknown user": []}
    for _ in range(runs):
        for case, user in zip(samples, (me, "no-such-user-ssh3"), strict=True):
            token = basic_authorization(user, "wrong password").encode()
            started = time.perf_counter()
            assert await auth.authenticate(user, CONV, token, "bench", "") is None
            samples[case].append((time.perf_counter() - started) * 1e3)
    print(f"\n{'password':12} {'case':32} {'median ms':>10} {'min':>8} {'max':>8}")
    for case, values in samples.items():
        print(f"{'':12} {case:32} {statistics.median(values):10.0f} {min(values):8.0f} "
              f"{max(values):8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--password-runs", type=int, default=0,
                        help="also time password logins (about 4 s per run)")
    args = parser.parse_args()
    asyncio.run(measure(args.runs))
    if args.password_runs:
        asyncio.run(measure_password(args.password_runs))


if __name__ == "__main__":
    main()
