"""`ssh3-server`: flags in the reference's single-dash style."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from ssh3 import event_loop
from ssh3.backends import BACKENDS
from ssh3.version import OUR_VERSION


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssh3-server",
        description="SSH3 server: SSH over HTTP/3. Answers a plain 404 to every request "
                    "that is not an SSH3 CONNECT to the secret URL path.",
    )
    p.add_argument("-bind", default="[::]:443",
                   help="UDP address to listen on, host:port (default [::]:443; port 0 picks "
                        "a free port, printed on stderr)")
    p.add_argument("-url-path", default="/ssh3-term",
                   help="secret URL path of the SSH3 endpoint (default /ssh3-term)")
    p.add_argument("-cert", default="./cert.pem", help="PEM certificate (chain)")
    p.add_argument("-key", default="./priv.key", help="PEM private key")
    p.add_argument("-generate-selfsigned-cert", action="store_true",
                   help="write a new self-signed certificate and key to -cert and -key "
                        "(they must not exist)")
    p.add_argument("-authorized-keys-file", action="append", default=None, metavar="PATTERN",
                   help="where a user's authorized identities are read, like sshd's "
                        "AuthorizedKeysFile: %%h is the home directory, %%u the user name, "
                        "relative paths are under the home; repeatable (default "
                        "%%h/.ssh3/authorized_identities and %%h/.ssh/authorized_keys)")
    p.add_argument("-oidc-ca-file", default=None, metavar="FILE",
                   help="CA bundle to trust when fetching OIDC discovery documents and "
                        "JWKS (default: the system's, or $SSL_CERT_FILE)")
    p.add_argument("-trusted-user-ca-keys", default=None, metavar="FILE",
                   help="OpenSSH CA public keys (one a line) whose user certificates are "
                        "accepted for any user they name as principal, like sshd's "
                        "TrustedUserCAKeys (docs/certificates.md)")
    p.add_argument("-permit-user-environment", action="store_true",
                   help="honour environment=\"NAME=value\" options in authorized_keys, like "
                        "sshd's PermitUserEnvironment (off by default)")
    p.add_argument("-enable-password-login", action="store_true",
                   help="accept passwords (HTTP Basic), checked through PAM service 'ssh3'; "
                        "off by default")
    p.add_argument("-per-source-penalties", choices=("yes", "no"), default="yes",
                   help="refuse sources with repeated failed logins for a while, without "
                        "checking their credentials (default yes)")
    p.add_argument("-penalty-exempt", action="append", default=[], metavar="NETWORKS",
                   help="comma-separated networks never penalised (repeatable)")
    p.add_argument("-max-auth-tries", type=int, default=6, metavar="N",
                   help="failed authentications on one connection before it is closed "
                        "(default 6)")
    p.add_argument("-login-grace-time", type=float, default=120.0, metavar="SECONDS",
                   help="time a connection may stay unauthenticated (default 120)")
    p.add_argument("-max-unauthenticated", type=int, default=100, metavar="N",
                   help="connections not yet authenticated at once (default 100)")
    p.add_argument("-disable-tcp-forwarding", action="store_true",
                   help="refuse direct-tcp channels (the client's -L / -forward-tcp)")
    p.add_argument("-disable-udp-forwarding", action="store_true",
                   help="refuse direct-udp channels (the client's -forward-udp)")
    p.add_argument("-disable-agent-forwarding", action="store_true",
                   help="ignore the client's agent forwarding request (-A)")
    p.add_argument("-disable-remote-forwarding", action="store_true",
                   help="refuse the client's remote forwarding requests (-R)")
    p.add_argument("-gateway-ports", action="store_true",
                   help="let -R listen on the address the client asks for (e.g. * for "
                        "every interface); by default its listeners are on loopback only, "
                        "like sshd's GatewayPorts no")
    p.add_argument("-subsystem", action="append", default=[], metavar="NAME=COMMAND",
                   help="run COMMAND (with the user's shell, like exec) for subsystem NAME; "
                        "repeatable; an empty COMMAND removes NAME (default: sftp=the "
                        "system's sftp-server when installed)")
    p.add_argument("-accept-env", default="LANG LC_*", metavar="PATTERNS",
                   help="environment variables a client may set (SendEnv/SetEnv), like "
                        "sshd's AcceptEnv; space-separated, * and ? wildcards; "
                        "default \"LANG LC_*\"; \"\" accepts none")
    p.add_argument("-extensions-mask", type=lambda v: int(v, 0), default=None,
                   metavar="BITS", help="announce only these ssh3-py extension bits "
                   "(testing: behave like an older or reference peer)")
    p.add_argument("-quic-backend", choices=BACKENDS, default=None,
                   help="QUIC library: aioquic (default) or qh3 (also $SSH3_QUIC_BACKEND)")
    p.add_argument("-v", action="store_true", help="debug logging on stderr")
    p.add_argument("-version", action="store_true", help="print the version and exit")
    return p


def parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"bad -bind {text!r}: expected host:port")
    host = host.strip("[]") or "::"
    try:
        port_num = int(port)
    except ValueError:
        raise ValueError(f"bad port in -bind {text!r}") from None
    if not 0 <= port_num < 65536:
        raise ValueError(f"bad port in -bind {text!r}")
    return host, port_num


async def _serve(config: object) -> None:
    from ssh3.server_api import listen  # the library's entry: one way to build a server

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with listen(config=config) as server:  # type: ignore[arg-type]
        host, port = server.address
        print(f"ssh3-server: listening on {host} port {port}", file=sys.stderr, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"ssh3-server version {OUR_VERSION.implementation} "
              f"{'.'.join(map(str, OUR_VERSION.software))}")
        return 0
    logging.basicConfig(level=logging.DEBUG if args.v else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if not args.v:
        for noisy in ("quic", "aioquic", "qh3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        host, port = parse_bind(args.bind)
    except ValueError as exc:
        print(f"ssh3-server: {exc}", file=sys.stderr)
        return 2
    url_path = args.url_path if args.url_path.startswith("/") else "/" + args.url_path
    if args.trusted_user_ca_keys is not None:
        from ssh3.auth.certificates import check_trusted_ca_file

        if not check_trusted_ca_file(args.trusted_user_ca_keys):
            return 1
    if args.generate_selfsigned_cert:
        from ssh3.certs import generate_self_signed

        try:
            generate_self_signed(args.cert, args.key)
        except (FileExistsError, OSError, ValueError) as exc:
            print(f"ssh3-server: cannot generate a certificate: {exc}", file=sys.stderr)
            return 1
    for path, what in ((args.cert, "certificate"), (args.key, "key")):
        if not os.path.exists(path):
            print(f"ssh3-server: the {what} file {path} does not exist: give -cert/-key, or "
                  "-generate-selfsigned-cert to create a pair", file=sys.stderr)
            return 1
    from .environment import parse_accept_env
    from .penalties import PenaltyPolicy, parse_networks
    from .server import ServerConfig
    from .sessions import default_subsystems

    subsystems = default_subsystems()
    for spec in args.subsystem:
        name, sep, command = spec.partition("=")
        if not sep or not name.strip():
            print(f"ssh3-server: bad -subsystem {spec!r}: expected NAME=COMMAND",
                  file=sys.stderr)
            return 2
        if command.strip():
            subsystems[name.strip()] = command.strip()
        else:
            subsystems.pop(name.strip(), None)

    try:
        exempt = parse_networks(args.penalty_exempt)
    except ValueError as exc:
        print(f"ssh3-server: {exc}", file=sys.stderr)
        return 2
    if args.oidc_ca_file:
        import ssl

        try:
            ssl.create_default_context(cafile=args.oidc_ca_file)
        except (OSError, ssl.SSLError) as exc:
            print(f"ssh3-server: -oidc-ca-file {args.oidc_ca_file}: {exc}", file=sys.stderr)
            return 2
    if args.max_auth_tries < 1 or args.max_unauthenticated < 1 or args.login_grace_time <= 0:
        print("ssh3-server: -max-auth-tries, -max-unauthenticated and -login-grace-time "
              "must be positive", file=sys.stderr)
        return 2

    config = ServerConfig(bind_host=host, bind_port=port, url_path=url_path,
                          cert_path=args.cert, key_path=args.key, backend=args.quic_backend,
                          authorized_keys_files=args.authorized_keys_file,
                          enable_password_login=args.enable_password_login,
                          oidc_ca_file=args.oidc_ca_file,
                          penalties=PenaltyPolicy(enabled=args.per_source_penalties == "yes",
                                                  exempt=exempt),
                          max_auth_tries=args.max_auth_tries,
                          login_grace_time=args.login_grace_time,
                          max_unauthenticated=args.max_unauthenticated,
                          allow_tcp_forwarding=not args.disable_tcp_forwarding,
                          allow_udp_forwarding=not args.disable_udp_forwarding,
                          allow_agent_forwarding=not args.disable_agent_forwarding,
                          allow_remote_forwarding=not args.disable_remote_forwarding,
                          gateway_ports=args.gateway_ports,
                          subsystems=subsystems,
                          permit_user_environment=args.permit_user_environment,
                          trusted_user_ca_keys=args.trusted_user_ca_keys,
                          accept_env=parse_accept_env(args.accept_env))
    if args.extensions_mask is not None:
        config.extensions &= args.extensions_mask

    try:
        with contextlib.suppress(KeyboardInterrupt):
            event_loop.run(_serve(config))  # uvloop when installed
    except (OSError, ValueError) as exc:
        print(f"ssh3-server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
