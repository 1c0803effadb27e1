"""OpenSSH's tools driving `ssh3` unchanged: sftp -S, scp -S (SFTP and -O legacy
mode), rsync -e and git's GIT_SSH_COMMAND (clone and push), through a `-F` config file that maps
the alias `box` to the test server (HostName, Port, URLPath, User, IdentityFile)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_helpers import HOST, USER, Client, Server, find_program, sha256_file

TIMEOUT = 60.0


@pytest.fixture
def server(shared_server: Server) -> Server:
    """Only file transfers into the test's own directories: one server per backend."""
    return shared_server


@dataclass
class Box:
    """What a tool needs to reach the server as `box`."""

    client: Client
    config: Path
    wrapper: Path  # `exec ssh3 -F config "$@"`: what sftp -S / scp -S take

    def env(self, **extra: str) -> dict[str, str]:
        return self.client.env(**extra)


def write_config(path: Path, server: Server, key: Path, alias: str = "box") -> Path:
    path.write_text(f"""\
# the tools pass only the alias; everything else comes from here
Host {alias}
    HostName {HOST}
    Port {server.port}
    URLPath {server.url_path}
    User {USER}
    IdentityFile {key}
Host *
    IdentitiesOnly yes
""")
    return path


@pytest.fixture
def box(server: Server, make_client, tmp_path: Path) -> Box:
    client = make_client(server.backend, trust=server)
    config = write_config(tmp_path / "ssh_config", server, client.key)
    wrapper = tmp_path / "ssh3-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {find_program("ssh3")} -F {config} '
                       f'-quic-backend {client.backend} "$@"\n')
    wrapper.chmod(0o755)
    return Box(client, config, wrapper)


def run(argv: list[str], box: Box, cwd: Path | None = None,
        **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, cwd=cwd,
                          env=box.env(**env), timeout=TIMEOUT, start_new_session=True)


def random_file(path: Path, size: int = 1 << 20) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def test_alias_from_config_file(box: Box, server: Server) -> None:
    """HostName/Port/URLPath/User/IdentityFile come from -F; known_hosts is checked
    under the HostName (the client trusts 127.0.0.1:PORT/PATH, not `box`)."""
    r = run([str(box.wrapper), "-n", "box", "echo", "via", "alias"], box)
    assert (r.returncode, r.stdout) == (0, b"via alias\n"), r.stderr
    r = run([str(box.wrapper), "-G", "box"], box)
    assert r.returncode == 0, r.stderr
    assert f"hostname {HOST}\nuser {USER}\nport {server.port}\n".encode() in r.stdout
    # a URL part beats the config: the wrong path gets the server's 404 (255)
    r = run([str(box.wrapper), "box/not-the-path", "true"], box)
    assert r.returncode == 255, r.stderr


def test_sftp_batch_put_and_get(box: Box, tmp_path: Path) -> None:
    src = random_file(tmp_path / "src.bin")
    remote = tmp_path / "remote.bin"
    back = tmp_path / "back.bin"
    batch = tmp_path / "batch"
    batch.write_text(f"put {src} {remote}\nget {remote} {back}\n")
    r = run(["sftp", "-S", str(box.wrapper), "-b", str(batch), "box"], box)
    assert r.returncode == 0, r.stderr
    assert sha256_file(remote) == sha256_file(src) == sha256_file(back)


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp-mode", "legacy-O"])
def test_scp_both_directions(box: Box, tmp_path: Path, legacy: bool) -> None:
    src = random_file(tmp_path / "src.bin", 256 * 1024)
    remote = tmp_path / "remote.bin"
    back = tmp_path / "back.bin"
    mode = ["-O"] if legacy else []
    r = run(["scp", *mode, "-S", str(box.wrapper), str(src), f"box:{remote}"], box)
    assert r.returncode == 0, r.stderr
    r = run(["scp", *mode, "-S", str(box.wrapper), f"box:{remote}", str(back)], box)
    assert r.returncode == 0, r.stderr
    assert sha256_file(remote) == sha256_file(src) == sha256_file(back)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_tree(box: Box, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    random_file(tree / "a.bin", 100_000)
    (tree / "sub" / "b.txt").write_text("hello\n")
    dest = tmp_path / "dest"
    r = run(["rsync", "-a", "-e", str(box.wrapper), f"{tree}/", f"box:{dest}/"], box)
    assert r.returncode == 0, r.stderr
    assert sha256_file(dest / "a.bin") == sha256_file(tree / "a.bin")
    assert (dest / "sub" / "b.txt").read_text() == "hello\n"
    back = tmp_path / "back"
    r = run(["rsync", "-a", "-e", str(box.wrapper), f"box:{dest}/", f"{back}/"], box)
    assert r.returncode == 0, r.stderr
    assert (back / "sub" / "b.txt").read_text() == "hello\n"


GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}


def git(box: Box, *argv: str, **env: str) -> bytes:
    r = run(["git", *argv], box, **GIT_ENV, **env)
    assert r.returncode == 0, (argv, r.stderr)
    return r.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_clone_and_push_over_ssh3(box: Box, tmp_path: Path) -> None:
    work, bare = tmp_path / "work", tmp_path / "bare.git"
    git(box, "init", "-q", "-b", "main", str(work))
    git(box, "-C", str(work), "commit", "-q", "--allow-empty", "-m", "first")
    git(box, "clone", "-q", "--bare", str(work), str(bare))
    # git probes `ssh -G` to pick its OpenSSH variant, then passes -p/-o like to ssh
    over = {"GIT_SSH_COMMAND": str(box.wrapper)}
    clone = tmp_path / "clone"
    git(box, "clone", "-q", f"box:{bare}", str(clone), **over)
    assert git(box, "-C", str(clone), "log", "--format=%s") == b"first\n"
    # a new commit with a binary file goes back through git-receive-pack
    random_file(clone / "blob.bin", 300_000)
    (clone / "notes.txt").write_text("pushed over ssh3\n")
    git(box, "-C", str(clone), "add", ".")
    git(box, "-C", str(clone), "commit", "-q", "-m", "second")
    git(box, "-C", str(clone), "push", "-q", "origin", "main", **over)
    head = git(box, "-C", str(clone), "rev-parse", "HEAD")
    assert git(box, "--git-dir", str(bare), "rev-parse", "main") == head
    again = tmp_path / "again"
    git(box, "clone", "-q", f"box:{bare}", str(again), **over)
    assert git(box, "-C", str(again), "log", "--format=%s") == b"second\nfirst\n"
    assert sha256_file(again / "blob.bin") == sha256_file(clone / "blob.bin")
    assert (again / "notes.txt").read_text() == "pushed over ssh3\n"
