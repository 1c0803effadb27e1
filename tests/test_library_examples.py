"""Every ```python block of docs/library.md (and of README.md's "Library" section)
runs as a script against a real server, on both QUIC backends, so that the
documented examples cannot rot.

Conventions in the Markdown, in HTML comments right before a block:
`<!-- run: ARGS -->` gives its command line ({dest}, {http_port}, {udp_port} are
filled in; default: `{dest}`), `<!-- expect: REGEX -->` (repeatable) must match
its stdout. The script runs with a HOME whose ~/.ssh/id_ed25519 is the test key and
whose ~/.ssh3/known_hosts trusts the server, as a user's would.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e_helpers import BACKENDS
from services import http_server, udp_service

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "library.md"
README = ROOT / "README.md"


@dataclass
class Example:
    source: str  # "library.md#2"
    code: str
    run: str = "{dest}"
    expect: list[str] = field(default_factory=list)


_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_COMMENT = re.compile(r"<!--\s*(run|expect):\s*(.*?)\s*-->")


def extract(text: str, name: str) -> list[Example]:
    examples = []
    last_end = 0
    for number, match in enumerate(_BLOCK.finditer(text), 1):
        example = Example(f"{name}#{number}", match.group(1))
        # only the comments between the previous block and this one belong to it
        for kind, value in _COMMENT.findall(text[last_end:match.start()]):
            if kind == "run":
                example.run = value
            else:
                example.expect.append(value)
        examples.append(example)
        last_end = match.end()
    return examples


def library_section(readme: str) -> str:
    """The text under a heading named "Library", to the next heading of its level
    or above; empty when there is none."""
    lines = readme.splitlines(keepends=True)
    for i, line in enumerate(lines):
        heading = re.match(r"(#+)\s+Library\b", line)
        if heading:
            level = len(heading.group(1))
            out = []
            for following in lines[i + 1:]:
                deeper = re.match(r"(#+)\s", following)
                if deeper and len(deeper.group(1)) <= level:
                    break
                out.append(following)
            return "".join(out)
    return ""


def all_examples() -> list[Example]:
    examples = extract(DOCS.read_text(), "library.md")
    if README.exists():
        examples += extract(library_section(README.read_text()), "README.md")
    return examples


def test_the_docs_have_the_examples_the_issue_asks_for():
    """Extraction must find them (a broken fence would silently run nothing)."""
    codes = [e.code for e in extract(DOCS.read_text(), "library.md")]
    for api in ("conn.run(", "create_process(", "forward_local_port(", "open_udp_forward(",
                "ssh3.listen(", "def authenticate("):
        assert any(api in code for code in codes), api
    assert all(e.expect for e in extract(DOCS.read_text(), "library.md"))


def test_readme_section_extraction():
    text = ("# ssh3\n## Library\nsee\n<!-- expect: x -->\n```python\nprint('x')\n```\n"
            "### Sub\n```python\nprint(2)\n```\n## Other\n```python\nprint(3)\n```\n")
    found = extract(library_section(text), "README.md")
    assert [(e.code, e.expect) for e in found] == [("print('x')\n", ["x"]), ("print(2)\n", [])]
    assert library_section("# ssh3\n## Usage\n") == ""


# ------------------------------------------------------------ services the examples use


@pytest.fixture(scope="module")
def http_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with http_server(tmp_path_factory.mktemp("www")) as port:
        yield port


@pytest.fixture(scope="module")
def udp_port() -> Iterator[int]:
    """A UDP echo service."""
    with udp_service(lambda data: data) as port:
        yield port


@pytest.fixture
def home(tmp_path: Path, user_key: Path, shared_server) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh3").mkdir()
    shutil.copy(user_key, home / ".ssh" / "id_ed25519")
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    (home / ".ssh3" / "known_hosts").write_text(shared_server.known_hosts_line())
    return home


@pytest.mark.parametrize("client_backend", BACKENDS)
@pytest.mark.parametrize("example", all_examples(), ids=lambda e: e.source)
def test_example_runs(example: Example, client_backend: str, shared_server, home: Path,
                      http_port: int, udp_port: int, tmp_path: Path) -> None:
    argv = shlex.split(example.run.format(dest=shared_server.target(), http_port=http_port,
                                          udp_port=udp_port))
    env = dict(os.environ, HOME=str(home), SSH3_QUIC_BACKEND=client_backend,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", example.code, *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=90)
    report = f"{example.source} exited {proc.returncode}\n--- stdout\n{proc.stdout}" \
             f"--- stderr\n{proc.stderr}"
    print(report)
    print(report)
    assert proc.returncode == 0, report
    assert "Traceback" not in proc.stderr, report
    for pattern in example.expect:
        assert re.search(pattern, proc.stdout), f"{pattern!r} not in the output\n{report}"
