"""The library API against a real server: `async with ssh3.connect(...) as conn`,
processes with streams, local TCP/UDP forwarding and direct connections."""

from __future__ import annotations

import asyncio
import io
import socket

import pytest
from e2e_helpers import BACKENDS, run_async

import ssh3
from ssh3.aio.client import HostKeyError


@pytest.fixture
def connect(shared_server, user_key, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(shared_server.known_hosts_line())

    def make(backend: str | None = None):
        return ssh3.connect(shared_server.target(), client_keys=[str(user_key)],
                            known_hosts=str(known), backend=backend)

    return make


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_collects_output_status_and_stderr(connect, backend):
    async def go() -> list[ssh3.CompletedProcess]:
        async with connect(backend) as conn:
            return [await conn.run("echo out; echo err >&2; exit 3"),
                    await conn.run("cat", input=b"x" * 100000, encoding=None),
                    await conn.run("kill -TERM $$")]

    status, echoed, killed = run_async(go())
    assert (status.returncode, status.stdout, status.stderr) == (3, "out\n", "err\n")
    assert echoed.returncode == 0 and echoed.stdout == b"x" * 100000
    assert (killed.exit_status, killed.exit_signal, killed.returncode) == (None, "TERM", 143)


def test_check_raises_and_unknown_hosts_are_refused(shared_server, user_key, tmp_path):
    known = tmp_path / "known_hosts"

    async def unknown() -> None:
        async with ssh3.connect(shared_server.target(), client_keys=[str(user_key)],
                                known_hosts=str(known)):
            pass

    with pytest.raises(HostKeyError, match="accept_new"):
        run_async(unknown())

    async def failing() -> None:
        async with ssh3.connect(shared_server.target(), client_keys=[str(user_key)],
                                known_hosts=str(known), accept_new=True) as conn:
            await conn.run("exit 4", check=True)

    with pytest.raises(ssh3.ProcessError) as info:
        run_async(failing())
    assert info.value.result.returncode == 4
    assert shared_server.known_hosts_line().split()[2] in known.read_text()  # remembered


def test_process_streams_interactively(connect):
    """A dialogue: each line written comes back before the next is sent; EOF ends
    the process; stderr is separate; iteration yields lines."""

    async def go() -> tuple[list[str], list[str], ssh3.CompletedProcess]:
        async with connect() as conn, \
                await conn.create_process("while read l; do echo got $l; "
                                          "echo e$l >&2; done; exit 7") as proc:
            answers = []
            for word in ("a", "b", "c"):
                proc.stdin.write(word + "\n")
                await proc.stdin.drain()
                answers.append(await proc.stdout.readline())
            errs = [await proc.stderr.readline() for _ in range(3)]
            proc.stdin.write_eof()
            result = await proc.wait()
            return answers, errs, result

    answers, errs, result = run_async(go())
    assert answers == ["got a\n", "got b\n", "got c\n"]
    assert errs == ["ea\n", "eb\n", "ec\n"]
    assert (result.exit_status, result.stdout, result.stderr) == (7, "", "")


def test_process_signal_pty_redirects_and_backpressure(connect):
    async def go() -> dict[str, object]:
        out: dict[str, object] = {}
        async with connect() as conn:
            async with await conn.create_process("sleep 30") as proc:
                proc.send_signal("INT")
                out["signal"] = (await proc.wait(timeout=10)).exit_signal
            async with await conn.create_process(
                    "stty size; tty >/dev/null && echo tty", term_type="xterm",
                    term_size=(100, 40)) as proc:
                out["pty"] = (await proc.wait(timeout=10)).stdout
            sink = io.BytesIO()
            result = await conn.run("head -c 300000 /dev/zero", stdout=sink)
            out["redirect"] = (len(sink.getvalue()), result.stdout)
            # 8 MiB that nobody reads for a while: flow control holds the rest back
            async with await conn.create_process("head -c 8388608 /dev/zero",
                                                 encoding=None) as proc:
                while len(proc.stdout._buffer) < 1 << 20:  # the 1 MiB limit is reached
                    await proc.stdout._wait_data()
                # the 7 MiB left come quickly on loopback unless flow control holds them
                await asyncio.sleep(0.5)
                out["buffered"] = len(proc.stdout._buffer)
                total = 0
                async for chunk in _chunks(proc.stdout):
                    total += len(chunk)
                out["total"] = total
                out["status"] = (await proc.wait()).exit_status
        return out

    out = run_async(go())
    assert out["signal"] == "INT"  # sent right after exec: the server must survive it
    assert out["pty"] == "40 100\r\ntty\r\n"
    assert out["redirect"] == (300000, "")
    assert out["buffered"] <= 2 << 20, out
    assert (out["total"], out["status"]) == (8 << 20, 0)


async def _chunks(stream):
    while chunk := await stream.read(65536):
        yield chunk


@pytest.fixture
def tcp_echo():
    """An echo service on 127.0.0.1 that also reports half-closes: on EOF it
    answers "bye" and closes."""

    async def start() -> asyncio.AbstractServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write(b"bye")
            writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    return start


def test_forward_local_port_and_open_connection(connect, tcp_echo):
    async def go() -> dict[str, object]:
        out: dict[str, object] = {}
        echo = await tcp_echo()
        echo_port = echo.sockets[0].getsockname()[1]
        async with connect() as conn:
            async with await conn.forward_local_port("127.0.0.1", 0, "localhost",
                                                     echo_port) as listener:
                port = listener.get_port()
                replies = []
                for n in range(3):  # several connections through one listener
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(f"hello {n}".encode() * 1000)
                    writer.write_eof()
                    replies.append(await reader.read())
                    writer.close()
                out["forwarded"] = replies
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)  # closed with the listener

            reader, writer = await conn.open_connection("127.0.0.1", echo_port)
            writer.write(b"direct")
            await writer.drain()
            out["direct"] = await reader.readexactly(6)
            writer.write_eof()
            out["after_eof"] = await reader.read()
            writer.close()

            closed = _closed_port()
            with pytest.raises(ssh3.ChannelOpenError) as info:
                await conn.open_connection("127.0.0.1", closed)
            out["refused"] = info.value.message
            out["still_works"] = (await conn.run("echo ok")).stdout
        echo.close()
        await echo.wait_closed()
        return out

    out = run_async(go())
    assert out["forwarded"] == [f"hello {n}".encode() * 1000 + b"bye" for n in range(3)]
    assert (out["direct"], out["after_eof"]) == (b"direct", b"bye")
    assert "refused" in str(out["refused"]).lower(), out["refused"]
    assert out["still_works"] == "ok\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_open_udp_forward(connect):
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data.upper(), addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self):
            self.replies: asyncio.Queue[bytes] = asyncio.Queue()

        def datagram_received(self, data, addr):
            self.replies.put_nowait(data)

    async def go() -> list[bytes]:
        loop = asyncio.get_running_loop()
        echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        echo_port = echo.get_extra_info("sockname")[1]
        got = []
        try:
            async with connect() as conn, \
                    await conn.open_udp_forward(0, "127.0.0.1", echo_port) as listener:
                transport, client = await loop.create_datagram_endpoint(
                    Client, remote_addr=("127.0.0.1", listener.get_port()))
                try:
                    for word in (b"one", b"two", b"three"):
                        # UDP may lose a datagram: resend until its answer comes
                        for _attempt in range(20):
                            transport.sendto(word)
                            try:
                                got.append(await asyncio.wait_for(client.replies.get(), 0.5))
                                break
                            except TimeoutError:
                                continue
                finally:
                    transport.close()
        finally:
            echo.close()
        return got

    assert run_async(go()) == [b"ONE", b"TWO", b"THREE"]
