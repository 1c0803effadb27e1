"""OpenSSH's real sftp, scp and rsync moving a tree of 1,000 small files and one
100 MiB file to and from an ssh3 server and back, compared file by file (sha256
manifests). One server per QUIC backend (the client uses the same backend); the
data is generated once per session."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import Server, sha256_file
from test_e2e_openssh_tools import Box, box, server  # noqa: F401  (fixtures)

N_FILES = 1000
BIG_SIZE = 100 << 20
TIMEOUT = 300.0  # one tool run; ~10x what one takes here (docs/openssh-tools.md)


def manifest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` (directories implied)."""
    return {str(p.relative_to(root)): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_tree(root: Path, rng: random.Random) -> None:
    """1,000 files of 0..4 KiB (a few empty) in three levels of directories."""
    for i in range(N_FILES):
        sub = root / f"d{i % 10}" / f"e{i % 7}" if i % 3 else root / f"d{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        size = 0 if i % 97 == 0 else rng.randint(0, 4096)
        (sub / f"f{i:04d}.bin").write_bytes(rng.randbytes(size))


class Data:
    def __init__(self, root: Path) -> None:
        self.tree = root / "tree"
        self.big = root / "big.bin"
        self.tree_manifest = manifest(self.tree)
        self.big_sha = sha256_file(self.big)


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("bulk-data")
    rng = random.Random(5)
    make_tree(root / "tree", rng)
    with open(root / "big.bin", "wb") as f:
        for _ in range(BIG_SIZE >> 20):
            f.write(os.urandom(1 << 20))
    return Data(root)


@pytest.fixture
def areas(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(remote area, local area for what comes back); removed at once, as 200 MiB
    per test would otherwise pile up until pytest prunes its temp directories."""
    remote, back = tmp_path / "remote", tmp_path / "back"
    remote.mkdir()
    back.mkdir()
    yield remote, back
    shutil.rmtree(remote, ignore_errors=True)
    shutil.rmtree(back, ignore_errors=True)


def run(argv: list[str], box: Box, cwd: Path | None = None) -> None:  # noqa: F811
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, cwd=cwd,
                       env=box.env(), timeout=TIMEOUT, start_new_session=True)
    assert r.returncode == 0, (argv, r.stdout[-2000:], r.stderr[-2000:])


def check(data: Data, tree: Path, big: Path) -> None:
    assert manifest(tree) == data.tree_manifest
    assert sha256_file(big) == data.big_sha


def test_sftp_tree_and_big_file(box: Box, data: Data, areas: tuple[Path, Path],  # noqa: F811
                                tmp_path: Path) -> None:
    remote, back = areas
    batch = tmp_path / "batch"
    batch.write_text(f"put -r {data.tree} {remote}/tree\nput {data.big} {remote}/big.bin\n"
                     f"get -r {remote}/tree {back}/tree\nget {remote}/big.bin {back}/big.bin\n")
    run(["sftp", "-q", "-S", str(box.wrapper), "-b", str(batch), "box"], box)
    check(data, remote / "tree", remote / "big.bin")
    check(data, back / "tree", back / "big.bin")


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp-mode", "legacy-O"])
def test_scp_tree_and_big_file(box: Box, data: Data, areas: tuple[Path, Path],  # noqa: F811
                               legacy: bool) -> None:
    remote, back = areas
    scp = ["scp", "-q", *(["-O"] if legacy else []), "-S", str(box.wrapper)]
    run([*scp, "-r", str(data.tree), f"box:{remote}/tree"], box)
    run([*scp, str(data.big), f"box:{remote}/big.bin"], box)
    run([*scp, "-r", f"box:{remote}/tree", str(back / "tree")], box)
    run([*scp, f"box:{remote}/big.bin", str(back / "big.bin")], box)
    check(data, remote / "tree", remote / "big.bin")
    check(data, back / "tree", back / "big.bin")


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_tree_and_big_file(box: Box, data: Data,  # noqa: F811
                                 areas: tuple[Path, Path]) -> None:
    remote, back = areas
    rsync = ["rsync", "-a", "-e", str(box.wrapper)]
    run([*rsync, f"{data.tree}/", str(data.big), f"box:{remote}/"], box)
    run([*rsync, f"box:{remote}/", f"{back}/"], box)
    assert sorted(p.name for p in remote.iterdir()) == ["big.bin", "d0", "d1", "d2", "d3",
                                                       "d4", "d5", "d6", "d7", "d8", "d9"]
    big_remote, big_back = remote / "big.bin", back / "big.bin"
    assert sha256_file(big_remote) == sha256_file(big_back) == data.big_sha
    big_remote.unlink()
    big_back.unlink()
    assert manifest(remote) == manifest(back) == data.tree_manifest


def test_server_is_still_serving(server: Server) -> None:  # noqa: F811
    """After the transfers the shared server is alive and logged no traceback."""
    assert server.alive()
    assert "Traceback" not in server.log()
