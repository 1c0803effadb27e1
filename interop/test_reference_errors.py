"""Authentication and routing failures across implementations (§2.3, §2.6, §7.5)."""

from __future__ import annotations

from interop_harness import WRONG_PATH, Pair

NO_SUCH_USER = "ssh3-interop-nosuchuser"


def _mentions_401(stderr: bytes) -> bool:
    text = stderr.lower()
    return b"401" in text or b"authentication" in text or b"unauthorized" in text


# ------------------------------------------------------------ our client -> reference server


def test_wrong_key_to_ref(to_ref: Pair) -> None:
    """A key that is not in authorized_keys: the reference answers 401 (and never ends
    the request stream, Q13); our client must not hang on it and exits 255."""
    result = to_ref.run("echo hello", key=to_ref.keys.wrong)
    assert result.code == 255, to_ref.failure(result, "expected exit status 255")
    assert b"hello" not in result.stdout, to_ref.failure(result, "the command ran")
    assert _mentions_401(result.stderr), to_ref.failure(
        result, "the error message should mention 401 / authentication")


def test_unknown_user_to_ref(to_ref: Pair) -> None:
    """An unknown user also gets 401 from the reference (§2.3 step 7)."""
    result = to_ref.run("echo hello", user=NO_SUCH_USER)
    assert result.code == 255, to_ref.failure(result, "expected exit status 255")
    assert _mentions_401(result.stderr), to_ref.failure(
        result, "the error message should mention 401 / authentication")


def test_wrong_path_to_ref(to_ref: Pair) -> None:
    """Any path but -url-path gets Go's plain ``404 page not found`` (§2.1, §2.6)."""
    result = to_ref.run("echo hello", path=WRONG_PATH)
    assert result.code == 255, to_ref.failure(result, "expected exit status 255")
    assert b"hello" not in result.stdout, to_ref.failure(result, "the command ran")
    assert b"404" in result.stderr, to_ref.failure(result, "the message should mention 404")


# ------------------------------------------------------------ reference client -> our server


def test_wrong_path_to_ours(to_ours: Pair) -> None:
    """Our 404 makes the reference client fail (non-zero exit, no session)."""
    result = to_ours.run("echo hello", path=WRONG_PATH)
    assert result.code != 0, to_ours.failure(result, "expected a non-zero exit status")
    assert b"hello" not in result.stdout, to_ours.failure(result, "the command ran")


def test_wrong_key_to_ours(to_ours: Pair) -> None:
    """Our 401 makes the reference client fail (non-zero exit, no session)."""
    result = to_ours.run("echo hello", key=to_ours.keys.wrong)
    assert result.code != 0, to_ours.failure(result, "expected a non-zero exit status")
    assert b"hello" not in result.stdout, to_ours.failure(result, "the command ran")


def test_known_user_wrong_key_then_right_key_to_ours(to_ours: Pair) -> None:
    """A refused attempt leaves our server healthy for the next connection."""
    refused = to_ours.run("echo hello", key=to_ours.keys.wrong)
    assert refused.code != 0, to_ours.failure(refused, "expected a non-zero exit status")
    ok = to_ours.run("echo hello")
    assert (ok.code, ok.stdout) == (0, b"hello\n"), to_ours.failure(ok, "after a refusal")
