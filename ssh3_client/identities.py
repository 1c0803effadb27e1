"""Which identities `ssh3` offers, in which order, and how it unlocks them.

The order is OpenSSH's (sshconnect2.c, pubkey_prepare):

1. the agent's keys (``$SSH_AUTH_SOCK``, or ``-o IdentityAgent=``), in the
   agent's order.  An agent key that is also one of the key files below (same
   public key, from ``FILE.pub`` or the clear part of an OpenSSH key) stands
   for that file, so the file's passphrase is never asked.  Agent keys whose
   type cannot sign an SSH3 JWT are skipped (debug log).  With
   ``-o IdentitiesOnly=yes`` only the agent keys that stand for a file are used;
   with ``-pubkey-for-agent FILE`` (the reference's flag) only the agent key
   matching that public key is.
2. the key files not already covered by the agent: ``-i``/``-privkey`` files if
   given, else the existing ones of ``~/.ssh/id_ed25519``, ``id_ecdsa``,
   ``id_rsa`` (none when ``-pubkey-for-agent`` is the explicit choice).

Certificates (docs/certificates.md): a key file with ``FILE-cert.pub`` beside it
that certifies its key sends that certificate in its token's header; an agent key
sends the certificate the agent lists for it (``ssh-add`` adds ``FILE-cert.pub``
with ``FILE``), else the one beside the file it stands for. A server that does not
know certificates ignores it and checks the plain key.

Everything is lazy: a key file is read, and its passphrase asked, only when
the identities before it were refused.  The passphrase is asked like OpenSSH's
read_passphrase(): on ``/dev/tty``, or through ``$SSH_ASKPASS`` when there is no
terminal, following ``SSH_ASKPASS_REQUIRE`` (``force``: always the program;
``prefer``: the program if ``DISPLAY``/``WAYLAND_DISPLAY`` is set; ``never``: never;
unset: the program only without a terminal and with a display).  A wrong
passphrase is reported and asked again, 3 times in all
(``-o NumberOfPasswordPrompts``); an empty answer skips the key;
``-o BatchMode=yes`` never asks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import struct
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ssh3.auth.key_lines import key_line_blob

if TYPE_CHECKING:
    from ssh3.aio.client import Identity
    from ssh3.auth.agent import AgentKey

log = logging.getLogger("ssh3.identities")

DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_PASSWORD_PROMPTS = 3  # OpenSSH's NumberOfPasswordPrompts
PROMPT_TIMEOUT = 300.0  # a passphrase nobody types in 5 minutes: skip the key
ASKPASS_DEFAULT = "/usr/bin/ssh-askpass"
MAX_PASSPHRASE = 8192
MAX_PUBLIC_FILE = 64 * 1024

Prompter = Callable[[str], Awaitable[bytes | None]]

_OPENSSH_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END = b"-----END OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC = b"openssh-key-v1\x00"


def _say(text: str) -> None:
    print(f"ssh3: {text}", file=sys.stderr, flush=True)


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "on", "1")


# ------------------------------------------------------------------ options


@dataclass
class IdentityOptions:
    files: list[str]
    agent_socket: str | None
    identities_only: bool = False
    pubkeys_for_agent: list[str] = field(default_factory=list)
    batch_mode: bool = False
    password_prompts: int = DEFAULT_PASSWORD_PROMPTS


def _expand(path: str, env: Mapping[str, str]) -> str:
    home = env.get("HOME")
    if home and (path == "~" or path.startswith("~/")):
        return home + path[1:]
    return os.path.expanduser(path)


def identity_options(args: Any, env: Mapping[str, str] | None = None) -> IdentityOptions:
    """Read the identity-related flags and `-o` options of the parsed command line."""
    env = os.environ if env is None else env
    options: dict[str, str] = getattr(args, "options", {}) or {}
    explicit: list[str] = list(getattr(args, "identities", []) or [])
    pubkeys: list[str] = list(getattr(args, "pubkeys_for_agent", []) or [])
    if explicit:
        files = [_expand(p, env) for p in explicit]
    elif pubkeys:
        files = []  # the reference's explicit agent-key choice: no default files
    else:
        files = [p for p in (_expand(d, env) for d in DEFAULT_IDENTITIES) if os.path.exists(p)]
    agent: str | None = env.get("SSH_AUTH_SOCK") or None
    identity_agent = options.get("identityagent")
    if identity_agent is not None:
        if identity_agent.lower() == "none":
            agent = None
        elif identity_agent != "SSH_AUTH_SOCK":
            value = identity_agent.removeprefix("$")
            agent = env.get(value) if value != identity_agent else _expand(value, env)
    try:
        prompts = int(options.get("numberofpasswordprompts", DEFAULT_PASSWORD_PROMPTS))
    except ValueError:
        prompts = DEFAULT_PASSWORD_PROMPTS
    return IdentityOptions(
        files=files,
        agent_socket=agent,
        identities_only=_yes(options.get("identitiesonly")),
        pubkeys_for_agent=[_expand(p, env) for p in pubkeys],
        batch_mode=_yes(options.get("batchmode")),
        password_prompts=max(0, prompts),
    )


# ------------------------------------------------------------------ public keys of files


def _string_at(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(data):
        raise ValueError("truncated")
    (n,) = struct.unpack_from(">I", data, pos)
    if pos + 4 + n > len(data):
        raise ValueError("truncated")
    return data[pos + 4 : pos + 4 + n], pos + 4 + n


def _blob_type(blob: bytes) -> bytes:
    return _string_at(blob, 0)[0]


def _public_blob_of_openssh_key(data: bytes) -> bytes | None:
    """An OpenSSH private key keeps its public key in the clear, even when encrypted."""
    start = data.find(_OPENSSH_BEGIN)
    end = data.find(_OPENSSH_END, start)
    if start < 0 or end < 0:
        return None
    try:
        blob = base64.b64decode(b"".join(data[start + len(_OPENSSH_BEGIN) : end].split()),
                                validate=True)
        if not blob.startswith(_OPENSSH_MAGIC):
            return None
        pos = len(_OPENSSH_MAGIC)
        for _ in range(3):  # cipher, kdf, kdf options
            _, pos = _string_at(blob, pos)
        if pos + 4 > len(blob) or struct.unpack_from(">I", blob, pos)[0] != 1:
            return None
        public, _ = _string_at(blob, pos + 4)
        _blob_type(public)
        return public
    except (binascii.Error, ValueError):
        return None


def public_blob_of_file(path: str) -> bytes | None:
    """The public key blob a file holds (a ``.pub`` line or an OpenSSH private key)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PUBLIC_FILE + 1)
    except OSError:
        return None
    if len(data) > MAX_PUBLIC_FILE:
        return None
    if _OPENSSH_BEGIN in data:
        return _public_blob_of_openssh_key(data)
    return key_line_blob(data)


def public_blob_of_key_file(path: str) -> bytes | None:
    """The public key of private key file *path*: from ``path.pub``, else from the file."""
    return public_blob_of_file(path + ".pub") or public_blob_of_file(path)


# ------------------------------------------------------------------ passphrases


def _open_tty() -> int | None:
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None


async def _read_tty_line(fd: int, timeout: float) -> bytes | None:
    """One line from the terminal, without blocking the event loop (QUIC keeps running)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes | None] = loop.create_future()
    buf = bytearray()

    def readable() -> None:
        try:
            chunk = os.read(fd, 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            if not done.done():
                done.set_result(bytes(buf) if buf else None)
            return
        buf.extend(chunk)
        if b"\n" in buf or b"\r" in buf or len(buf) > MAX_PASSPHRASE:
            if not done.done():
                done.set_result(bytes(buf))

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(done, timeout)
    finally:
        loop.remove_reader(fd)


async def tty_prompt(prompt: str, fd: int, timeout: float = PROMPT_TIMEOUT) -> bytes | None:
    """Ask on the terminal *fd* (closed afterwards) with echo off; None if nothing came."""
    import termios

    old = None
    try:
        with contextlib.suppress(termios.error):
            old = termios.tcgetattr(fd)
        # like OpenSSH: "\r" so the prompt starts the line (and hides what was
        # typed before echo went off), echo off, then the prompt
        os.write(fd, b"\r")
        if old is not None:
            new = list(old)
            new[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSAFLUSH, new)
        os.write(fd, prompt.encode("utf-8", "replace"))
        try:
            line = await _read_tty_line(fd, timeout)
        except TimeoutError:
            line = None
            with contextlib.suppress(OSError):
                os.write(fd, b"\r\nssh3: no passphrase typed in time")
        return None if line is None else line.split(b"\r")[0].split(b"\n")[0]
    finally:
        if old is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(fd, termios.TCSAFLUSH, old)
        with contextlib.suppress(OSError):
            os.write(fd, b"\r\n")
        os.close(fd)


async def askpass_prompt(program: str, prompt: str, timeout: float = PROMPT_TIMEOUT
                         ) -> bytes | None:
    """Run the askpass *program* with the prompt as its argument; the first line it
    prints, or None if it failed (as OpenSSH's ssh_askpass())."""
    try:
        proc = await asyncio.create_subprocess_exec(
            program, prompt, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    except OSError as exc:
        _say(f"cannot run {program}: {exc.strerror or exc}")
        return None
    assert proc.stdout is not None
    stdout = proc.stdout

    async def read_all() -> bytes:
        out = bytearray()
        while len(out) <= MAX_PASSPHRASE:
            chunk = await stdout.read(4096)
            if not chunk:
                break
            out.extend(chunk)
        return bytes(out)

    try:
        out = await asyncio.wait_for(read_all(), timeout)
        code = await asyncio.wait_for(proc.wait(), 5.0)
    except TimeoutError:
        _say(f"{program} did not answer in time")
        return None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)
    if code != 0:
        log.debug("%s exited with status %s", program, code)
        return None
    return out.split(b"\r")[0].split(b"\n")[0]


def make_prompter(env: Mapping[str, str] | None = None) -> Prompter:
    """OpenSSH's read_passphrase() choice between /dev/tty and $SSH_ASKPASS."""
    env = os.environ if env is None else env

    async def ask(prompt: str) -> bytes | None:
        require = env.get("SSH_ASKPASS_REQUIRE", "").lower()
        allow_askpass = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
        use_askpass = False
        if require == "force":
            use_askpass = allow_askpass = True
        elif require == "prefer":
            use_askpass = allow_askpass
        elif require == "never":
            allow_askpass = False
        fd = None if use_askpass and allow_askpass else _open_tty()
        if fd is None and not use_askpass:
            use_askpass = True  # no terminal
        if use_askpass and allow_askpass:
            program = env.get("SSH_ASKPASS") or ASKPASS_DEFAULT
            return await askpass_prompt(program, prompt)
        if fd is None:
            _say("no terminal to ask for a passphrase on (for a program, set SSH_ASKPASS "
                 "and SSH_ASKPASS_REQUIRE=force)")
            return None
        return await tty_prompt(prompt, fd)

    return ask


# ------------------------------------------------------------------ identities


def certificate_of_key_file(path: str, public_blob: bytes | None) -> bytes | None:
    """The OpenSSH certificate ``PATH-cert.pub`` beside key file *path*, if it
    certifies that key (OpenSSH's CertificateFile default)."""
    from ssh3.auth.certificates import certificate_blob_of_text, certified_key_blob

    try:
        with open(path + "-cert.pub", "rb") as f:
            data = f.read(MAX_PUBLIC_FILE + 1)
    except OSError:
        return None
    blob = certificate_blob_of_text(data) if len(data) <= MAX_PUBLIC_FILE else None
    if blob is None:
        _say(f"{path}-cert.pub is not an OpenSSH certificate; not sent")
        return None
    certified = certified_key_blob(blob)
    if public_blob is not None and certified != public_blob:
        _say(f"{path}-cert.pub certifies another key; not sent")
        return None
    log.debug("certificate %s-cert.pub goes with %s", path, path)
    return blob


def agent_identity(socket_path: str, key: AgentKey, label: str,
                   certificate: bytes | None = None) -> Identity:
    """Sign the token with the agent's *key*, when (and only if) it is tried;
    *certificate* (for that key) travels in the token's header."""
    from ssh3.aio.client import Identity, IdentityUnavailable

    async def make(user: str, conversation_id: bytes) -> str:
        from ssh3.auth.agent import AgentError, agent_sign_jws
        from ssh3.auth.jwt_token import finish_token, token_signing_input

        assert key.algorithm is not None
        signing_input = token_signing_input(key.algorithm, user, conversation_id, backdate=2,
                                            certificate=certificate)
        try:
            signature = await agent_sign_jws(socket_path, key, signing_input.encode("ascii"))
        except AgentError as exc:
            _say(f"signing with {label} failed: {exc}")
            raise IdentityUnavailable(str(exc)) from exc
        return "Bearer " + finish_token(signing_input, signature)

    return Identity(label, make)


def file_identity(path: str, prompter: Prompter, options: IdentityOptions,
                  certificate: bytes | None = None) -> Identity:
    """A key file, read (and its passphrase asked) only when it is tried; with the
    certificate beside it in the token's header."""
    from ssh3.aio.client import Identity, IdentityUnavailable

    loaded: list[Any] = []

    async def load() -> Any:
        from ssh3.auth.keys import (
            KeyLoadError,
            PassphraseRequired,
            WrongPassphrase,
            load_private_key,
        )

        try:
            return load_private_key(path)
        except PassphraseRequired:
            pass
        except KeyLoadError as exc:
            _say(f"cannot use identity {path}: {exc}")
            raise IdentityUnavailable(str(exc)) from exc
        if options.batch_mode:
            raise IdentityUnavailable("encrypted key and BatchMode=yes")
        for _ in range(options.password_prompts):
            passphrase = await prompter(f"Enter passphrase for key '{path}': ")
            if not passphrase:
                raise IdentityUnavailable("no passphrase given")
            try:
                return await asyncio.to_thread(load_private_key, path, passphrase)
            except KeyLoadError as exc:
                if not isinstance(exc, WrongPassphrase):
                    _say(f"cannot use identity {path}: {exc}")
                    raise IdentityUnavailable(str(exc)) from exc
                _say(f"wrong passphrase for {path}")
        raise IdentityUnavailable("no correct passphrase given")

    async def make(user: str, conversation_id: bytes) -> str:
        from ssh3.auth.jwt_token import build_token

        if not loaded:
            loaded.append(await load())
        return "Bearer " + build_token(loaded[0], user, conversation_id, backdate=2,
                                       certificate=certificate)

    return Identity(path, make)


def password_identities(host: str, prompter: Prompter,
                        options: IdentityOptions) -> list[Identity]:
    """`-use-password`: HTTP Basic, asked for when tried; like OpenSSH, up to
    NumberOfPasswordPrompts attempts (each a new request on the same connection)."""
    from ssh3.aio.client import Identity, IdentityUnavailable
    from ssh3.auth.password import basic_authorization

    def one(attempt: int) -> Identity:
        async def make(user: str, conversation_id: bytes) -> str:
            if options.batch_mode:
                raise IdentityUnavailable("BatchMode: no password prompt")
            if attempt > 0:
                _say("Permission denied, please try again.")
            answer = await prompter(f"{user}@{host}'s password: ")
            if not answer:
                raise IdentityUnavailable("no password given")
            return basic_authorization(user, answer.decode("utf-8", "replace"))

        return Identity("password", make)

    return [one(i) for i in range(max(1, options.password_prompts))]


def _agent_label(key: AgentKey) -> str:
    return f"{key.comment or key.fingerprint} (agent)"


def _agent_certificates(agent_keys: list[AgentKey]) -> dict[bytes, bytes]:
    """Certificates the agent lists (``ssh-add`` adds ``KEY-cert.pub`` with KEY),
    by the blob of the key they certify; the first one of a key wins. The agent
    signs with the plain key; the certificate only travels in the token header."""
    from ssh3.auth.certificates import CERT_SUFFIX, certified_key_blob

    certs: dict[bytes, bytes] = {}
    for key in agent_keys:
        if key.key_type.endswith(CERT_SUFFIX):
            certified = certified_key_blob(key.blob)
            if certified is not None:
                certs.setdefault(certified, key.blob)
    return certs


async def load_identities(args: Any, env: Mapping[str, str] | None = None,
                          prompter: Prompter | None = None) -> list[Identity]:
    """The identities to offer, in order (see the module docstring)."""
    options = identity_options(args, env)
    prompter = prompter or make_prompter(env)
    if getattr(args, "use_password", False):
        # an explicit choice, as in the reference: no key is tried (each refused key
        # would count against this source on servers with penalties)
        return password_identities(getattr(args, "target_host", "") or "host", prompter,
                                   options)

    files: list[tuple[str, bytes | None]] = []
    explicit = bool(getattr(args, "identities", None))
    for path in dict.fromkeys(options.files):  # each file once, in order
        if explicit and not os.path.exists(path):
            _say(f"identity file {path} not accessible: No such file or directory")
            continue
        files.append((path, public_blob_of_key_file(path)))

    wanted: list[bytes] | None = None
    if options.pubkeys_for_agent:
        wanted = []
        for path in options.pubkeys_for_agent:
            blob = public_blob_of_file(path)
            if blob is None:
                _say(f"-pubkey-for-agent {path}: not a readable public key")
            else:
                wanted.append(blob)

    identities: list[Identity] = []
    covered: set[str] = set()
    agent_used = False
    if options.agent_socket:
        from ssh3.auth.agent import AgentError, list_agent_keys

        try:
            agent_keys = await list_agent_keys(options.agent_socket)
        except AgentError as exc:
            log.debug("agent not used: %s", exc)
            agent_keys = []
        agent_certs = _agent_certificates(agent_keys)
        for key in agent_keys:
            if wanted is not None and key.blob not in wanted:
                continue
            if key.algorithm is None:
                log.debug("agent key %s (%s) skipped: ssh3 cannot sign with a %s key",
                          key.comment, key.fingerprint, key.key_type)
                continue
            path = next((p for p, blob in files if blob == key.blob and p not in covered),
                        None)
            cert = agent_certs.get(key.blob)
            if path is not None:
                covered.add(path)
                cert = cert or certificate_of_key_file(path, key.blob)
                identities.append(agent_identity(options.agent_socket, key,
                                                 f"{path} (agent{', cert' if cert else ''})",
                                                 cert))
                agent_used = True
            elif not options.identities_only or wanted is not None:
                # -pubkey-for-agent names its keys: they count as configured
                identities.append(agent_identity(options.agent_socket, key, _agent_label(key),
                                                 cert))
                agent_used = True
    if wanted is not None and not agent_used:
        _say("the agent holds none of the -pubkey-for-agent keys"
             if options.agent_socket else "-pubkey-for-agent needs an agent (SSH_AUTH_SOCK)")

    for path, blob in files:
        if path not in covered:
            identities.append(file_identity(path, prompter, options,
                                            certificate_of_key_file(path, blob)))
    if getattr(args, "use_oidc", None):
        # as the reference: keys named on the command line come first, then OIDC
        # (no default key files nor unnamed agent keys)
        from .oidc import oidc_identity

        if not explicit and not options.pubkeys_for_agent:
            identities = []
        identities.append(await oidc_identity(args, env))
    log.debug("identities, in order: %s", ", ".join(i.label for i in identities) or "none")
    return identities


__all__ = [
    "DEFAULT_IDENTITIES",
    "IdentityOptions",
    "Prompter",
    "agent_identity",
    "askpass_prompt",
    "certificate_of_key_file",
    "file_identity",
    "identity_options",
    "load_identities",
    "make_prompter",
    "public_blob_of_file",
    "public_blob_of_key_file",
    "tty_prompt",
]
