"""Small real network services on 127.0.0.1 for the e2e tests: what the forwardings
reach. Each runs in threads for the length of a with-block and yields its port; the
listener is closed and the threads joined when the block ends.

One accept loop (and one datagram loop) serves every test that needs a TCP (or UDP)
service; a test says only what its service does with a connection (or datagram).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from e2e_helpers import HOST


@contextlib.contextmanager
def background(target: Callable[[], None], stop: Callable[[], None]) -> Iterator[None]:
    """*target* in a thread for the with-block; *stop* makes it return."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop()
        thread.join(10)
        assert not thread.is_alive()


@contextlib.contextmanager
def tcp_service(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """TCP: each connection is given to *handle* in a thread of its own (closed after
    it returns; an OSError there only ends that connection)."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.2)  # the accept loop looks at `stopping` this often
    stopping = threading.Event()
    workers: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            handle(conn)

    def accept_loop() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            worker = threading.Thread(target=serve, args=(conn,), daemon=True)
            worker.start()
            workers.append(worker)
        for worker in workers:
            worker.join(10)

    with background(accept_loop, stopping.set):
        yield listener.getsockname()[1]
    listener.close()


def _echo(conn: socket.socket, eof_mark: bytes | None) -> None:
    conn.settimeout(30)
    while data := conn.recv(65536):
        conn.sendall(data)
    if eof_mark is not None:
        conn.sendall(eof_mark)
        conn.shutdown(socket.SHUT_WR)


def echo_service(eof_mark: bytes | None = None) -> contextlib.AbstractContextManager[int]:
    """TCP echo. With *eof_mark*: after the client's EOF it sends that and closes, a
    reply that can only come through a half-closed connection."""
    return tcp_service(functools.partial(_echo, eof_mark=eof_mark))


def reply_service(reply: bytes) -> contextlib.AbstractContextManager[int]:
    """TCP: sends *reply* to each connection and closes it."""
    return tcp_service(lambda conn: conn.sendall(reply))


@contextlib.contextmanager
def udp_service(answer: Callable[[bytes], bytes | None]) -> Iterator[int]:
    """UDP: each datagram gets *answer(datagram)* back to its sender (nothing for None)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(0.2)  # the loop looks at `stopping` this often
    stopping = threading.Event()

    def run() -> None:
        while not stopping.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = answer(data)
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, addr)

    with background(run, stopping.set):
        yield sock.getsockname()[1]
    sock.close()


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a directory's files, without a log line a request."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return None


@contextlib.contextmanager
def http_service(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """A real HTTP server (python's http.server) answering with *handler*."""
    httpd = http.server.ThreadingHTTPServer((HOST, 0), handler)  # type: ignore[arg-type]
    httpd.daemon_threads = True

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    with background(httpd.serve_forever, stop):
        yield httpd.server_address[1]


def http_server(directory: Path) -> contextlib.AbstractContextManager[int]:
    """HTTP serving the files of *directory*."""
    return http_service(functools.partial(QuietFiles, directory=str(directory)))


def fetch(port: int, name: str = "index.html") -> bytes:
    """GET /name from 127.0.0.1:port (a forwarded port in front of an http_server)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/{name}", timeout=30) as response:
        return response.read()
