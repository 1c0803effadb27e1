"""SendEnv/SetEnv and ControlMaster against the reference Go ssh3-server.

The reference ends the conversation on an unknown channel request (Q2), and serves
one conversation per QUIC connection (Q11). So towards it our client must send no
`env` request (it announced no EXT_ENV) and must not become a multiplexing master
(a second CONNECT on the connection would break the first conversation): every run
works as if neither option were given.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from interop_harness import Pair, our_client_argv, run_client


def _argv(pair: Pair, command: str, extra: list[str]) -> list[str]:
    argv = pair.client_argv(command)
    n = len(our_client_argv(pair.backend))
    return argv[:n] + ["-F", "none", *extra] + argv[n:]


def test_env_not_sent_to_reference(to_ref: Pair) -> None:
    argv = _argv(to_ref, "exit 3", ["-v", "-o", "SetEnv=LC_ALL=C.UTF-8 FOO=bar",
                                    "-o", "SendEnv=LANG"])
    result = run_client(argv, to_ref.client_home)
    # 3, not 255: the conversation survived (an `env` request would have ended it)
    assert result.code == 3, to_ref.failure(result, "the session did not run to its end")
    assert b"not sent" in result.stderr, to_ref.failure(result, "no -v note about SetEnv")


def test_no_master_towards_reference(to_ref: Pair, tmp_path: Path) -> None:
    control = str(tmp_path / "ctl")
    mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}",
           "-o", "ControlPersist=yes"]
    for code in (3, 4):
        result = run_client(_argv(to_ref, f"exit {code}", mux), to_ref.client_home)
        assert result.code == code, to_ref.failure(result, "the run failed")
    assert not Path(control).exists()
    check = subprocess.run(_argv(to_ref, "true", ["-o", f"ControlPath={control}",
                                                  "-O", "check"]),
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert check.returncode == 255 and b"Master running" not in check.stderr
