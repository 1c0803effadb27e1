"""Fixtures for the interop tests against the reference Go ssh3 (v0.1.7).

The tests run only when ``$SSH3_REF_BIN_DIR`` names a folder holding the reference
``ssh3`` and ``ssh3-server``; otherwise every test is skipped with that reason.
See interop/README.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # the helper module is importable whatever --import-mode is
    sys.path.insert(0, _HERE)

from interop_harness import (  # noqa: E402
    OUR_BACKENDS,
    REF_CLIENT,
    REF_DIR_ENV,
    REF_SERVER,
    Keys,
    LoginUser,
    Pair,
    PtyProcess,
    ServerProcess,
    make_ed25519_key,
    start_our_server,
    start_reference_server,
    user_processes,
)

INTEROP_USER = os.environ.get("SSH3_INTEROP_USER", "ssh3interop")

SKIP_NO_REF = (f"{REF_DIR_ENV} is not set: the interop tests need the reference "
               "francoismichel/ssh3 v0.1.7 binaries `ssh3` and `ssh3-server` "
               f"(run `{REF_DIR_ENV}=/path/to/bin python -m pytest interop`, see "
               "interop/README.md)")
SKIP_NOT_ROOT = ("reference server must run as root: it setuid()s to the logged-in user "
                 "(PROTOCOL.md §2.5); run the interop tests as root")


# ---------------------------------------------------------------- session fixtures


@pytest.fixture(scope="session")
def ref_bin_dir() -> Path:
    raw = os.environ.get(REF_DIR_ENV, "").strip()
    if not raw:
        pytest.skip(SKIP_NO_REF)
    directory = Path(raw).expanduser().resolve()
    missing = [name for name in (REF_CLIENT, REF_SERVER)
               if not os.access(directory / name, os.X_OK)]
    if missing:
        pytest.fail(f"{REF_DIR_ENV}={raw} but {', '.join(missing)} is missing or not "
                    f"executable in {directory}", pytrace=False)
    return directory


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if not os.access(useradd, os.X_OK):
        pytest.skip(f"user {name} does not exist and useradd is not available to create it")
    proc = subprocess.run([useradd, "-m", "-s", "/bin/bash", name], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"useradd -m -s /bin/bash {name} failed ({proc.returncode}): "
                    f"{proc.stderr.decode(errors='replace')}", pytrace=False)
    return pwd.getpwnam(name)


@pytest.fixture(scope="session")
def login_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoginUser]:
    """The account sessions run as.

    As root: the dedicated user ``ssh3interop`` (created with ``useradd -m -s
    /bin/bash`` if missing, and kept). The reference client also runs as this user,
    so its ``~/.ssh3`` is this user's; that directory is put back as it was at the
    end, and processes of this user that the sessions left behind are killed (by PID).

    Not root: the current user; only our server can serve it (the reference server
    needs root), reading a private authorized_keys file given with
    ``-authorized-keys-file``.
    """
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        path = tmp_path_factory.mktemp("interop-authorized") / "authorized_keys"
        yield LoginUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, path)
        return

    pw = _ensure_user(INTEROP_USER)
    home = Path(pw.pw_dir)
    if not home.is_dir():
        home.mkdir(mode=0o750, parents=True)
        os.chown(home, pw.pw_uid, pw.pw_gid)
    ssh3_dir = home / ".ssh3"
    ssh3_dir_existed = ssh3_dir.is_dir()
    known_hosts = ssh3_dir / "known_hosts"
    known_hosts_before = known_hosts.read_bytes() if known_hosts.is_file() else None
    before = user_processes(pw.pw_uid)
    try:
        yield LoginUser(pw.pw_name, pw.pw_uid, pw.pw_gid, str(home), None)
    finally:
        # the servers (which depend on this fixture) are stopped by now
        leftovers = sorted(user_processes(pw.pw_uid) - before)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            warnings.warn(f"killed processes of {pw.pw_name} left behind by the sessions: "
                          f"{leftovers}", stacklevel=1)
        if not ssh3_dir_existed:
            shutil.rmtree(ssh3_dir, ignore_errors=True)
        elif known_hosts_before is None:
            known_hosts.unlink(missing_ok=True)
        else:
            known_hosts.write_bytes(known_hosts_before)


@pytest.fixture(scope="session")
def workspace(login_user: LoginUser, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Path]:
    """Files the reference client needs (keys, its binary): owned by the login user
    when running as root, since that client then runs as that user."""
    if os.geteuid() != 0:
        yield tmp_path_factory.mktemp("interop-workspace")
        return
    directory = Path(tempfile.mkdtemp(prefix="ssh3-interop-", dir="/tmp"))
    try:
        os.chown(directory, login_user.uid, login_user.gid)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _give(path: Path, user: LoginUser) -> None:
    if os.geteuid() == 0:
        os.chown(path, user.uid, user.gid)


@pytest.fixture(scope="session")
def keys(workspace: Path, login_user: LoginUser) -> Keys:
    directory = workspace / "keys"
    marker = f"ssh3-interop-{uuid.uuid4().hex[:12]}"
    keys = Keys(make_ed25519_key(directory, "id_good", marker),
                make_ed25519_key(directory, "id_wrong", marker + "-unauthorized"))
    for path in (directory, *directory.iterdir()):
        _give(path, login_user)
    return keys


@pytest.fixture(scope="session")
def authorized_key(keys: Keys, login_user: LoginUser) -> Iterator[None]:
    """The good key is authorized for the login user: as root, appended to
    ``~user/.ssh/authorized_keys`` (where both servers look by default, home from
    getpwnam) and removed at the end; otherwise written to the private file."""
    line = keys.good.public_line.encode()
    if login_user.authorized_keys_file is not None:
        login_user.authorized_keys_file.write_bytes(line + b"\n")
        login_user.authorized_keys_file.chmod(0o600)
        yield
        return
    ssh_dir = Path(login_user.home) / ".ssh"
    if not ssh_dir.is_dir():
        ssh_dir.mkdir(mode=0o700)
        _give(ssh_dir, login_user)
    authorized = ssh_dir / "authorized_keys"
    created = not authorized.exists()
    existing = b"" if created else authorized.read_bytes()
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    authorized.write_bytes(existing + line + b"\n")
    _give(authorized, login_user)
    authorized.chmod(0o600)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            kept = b"".join(entry for entry in authorized.read_bytes().splitlines(keepends=True)
                            if entry.strip() != line)
            if created and not kept.strip():
                authorized.unlink()
            else:
                authorized.write_bytes(kept)


@pytest.fixture(scope="session")
def ref_client_bin(ref_bin_dir: Path, workspace: Path, login_user: LoginUser) -> Path:
    """The reference ``ssh3``; as root, a copy the login user can surely execute (the
    folder given in $SSH3_REF_BIN_DIR may not be reachable for that user)."""
    original = ref_bin_dir / REF_CLIENT
    if os.geteuid() != 0:
        return original
    directory = workspace / "bin"
    directory.mkdir(mode=0o755)
    copy = directory / REF_CLIENT
    shutil.copy2(original, copy)
    copy.chmod(0o755)
    return copy


@pytest.fixture(scope="session")
def ref_server(ref_bin_dir: Path, login_user: LoginUser, authorized_key: None,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if os.geteuid() != 0:
        pytest.skip(SKIP_NOT_ROOT)
    server = start_reference_server(ref_bin_dir, tmp_path_factory.mktemp("ref-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def our_servers(login_user: LoginUser, authorized_key: None,
                tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Callable[[str], ServerProcess]]:
    """Factory: our server on a given QUIC backend, started once per session."""
    started: dict[str, ServerProcess] = {}

    def get(backend: str) -> ServerProcess:
        if backend not in started:
            started[backend] = start_our_server(
                backend, tmp_path_factory.mktemp(f"our-server-{backend}"),
                authorized_keys_file=login_user.authorized_keys_file)
        return started[backend]

    try:
        yield get
    finally:
        for server in started.values():
            server.stop()


def _backend_available(backend: str) -> bool:
    return importlib.util.find_spec(backend) is not None


def _make_pair(request: pytest.FixtureRequest, client: str, backend: str,
               server: ServerProcess | None = None) -> Pair:
    request.getfixturevalue("ref_bin_dir")  # skips first when there are no binaries
    if backend in OUR_BACKENDS and not _backend_available(backend):
        pytest.skip(f"QUIC backend {backend} is not installed")
    if server is None:
        server = (request.getfixturevalue("ref_server") if client == "ours"
                  else request.getfixturevalue("our_servers")(backend))
    server.check_alive()
    user: LoginUser = request.getfixturevalue("login_user")
    tmp_path: Path = request.getfixturevalue("tmp_path")
    home = tmp_path / f"home-{client}"
    home.mkdir(mode=0o700)
    run_as = (user.uid, user.gid) if os.geteuid() == 0 else None
    return Pair(client, backend, server, user, request.getfixturevalue("keys"),
                request.getfixturevalue("ref_client_bin"), home, run_as)


_BACKENDS = OUR_BACKENDS
PAIR_PARAMS = [("ours", b) for b in _BACKENDS] + [("ref", b) for b in _BACKENDS]


def _pair_id(param: tuple[str, str]) -> str:
    client, backend = param
    return f"ours-{backend}-to-ref" if client == "ours" else f"ref-to-ours-{backend}"


@pytest.fixture(params=PAIR_PARAMS, ids=_pair_id)
def pair(request: pytest.FixtureRequest) -> Pair:
    """Both directions: our client -> reference server, reference client -> our server."""
    return _make_pair(request, *request.param)


@pytest.fixture(params=_BACKENDS)
def to_ref(request: pytest.FixtureRequest) -> Pair:
    """Our client (on each backend) -> the reference server."""
    return _make_pair(request, "ours", request.param)


@pytest.fixture(params=_BACKENDS)
def to_ours(request: pytest.FixtureRequest) -> Pair:
    """The reference client -> our server (on each backend)."""
    return _make_pair(request, "ref", request.param)


@pytest.fixture
def ref_to_ref(request: pytest.FixtureRequest) -> Pair:
    """The reference client -> the reference server: a baseline, not a test subject."""
    return _make_pair(request, "ref", "-", request.getfixturevalue("ref_server"))


@pytest.fixture
def spawn_pty() -> Iterator[Callable[..., PtyProcess]]:
    """Factory (``spawn_pty(pair, rows=, columns=)``); every pty client is killed by
    PID afterwards if it is still running."""
    started: list[PtyProcess] = []

    def spawn(pair: Pair, **kwargs: object) -> PtyProcess:
        proc = pair.pty(**kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.close()
