"""The raw backend row of the throughput benchmark: one QUIC stream between a bare
client and server of one QUIC library (aioquic or qh3), no HTTP/3 and no SSH3 layer,
with the windows ssh3 uses (16 MiB per stream, 32 MiB per connection). ssh3's -L
figure over this one, in the same run, is the overhead of everything above QUIC.

    python bench/raw_quic.py serve --backend qh3 --cert c.pem --key k.pem
        prints `PORT <n>`; every stream's bytes are hashed and, at its FIN,
        answered with `<sha256> <bytes>\\n`; stops on stdin EOF
    python bench/raw_quic.py send --backend qh3 --port N --file data.bin
        prints one JSON line: seconds (first byte sent to the answer), reply

The server runs on the same UDP I/O as ssh3-server (the backend adapter's `serve`:
batched receive, see ssh3/backends/batched_udp.py), so that the ratio isolates the
layers above QUIC; the sender is the library's own `connect` and protocol as
shipped (under aioquic without the GSO sends ssh3's client adds), with the same
send-side back-pressure as ssh3's channels (wait while more than 1 MiB is
unacknowledged)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssh3.backends import get_backend  # noqa: E402 - the adapters spell library details

ALPN = "ssh3-bench-raw"
CHUNK = 64 * 1024
HIGH_WATER = 1 << 20


def _configuration(backend: Any, is_client: bool) -> Any:
    cfg = backend.configuration_class(is_client=is_client, alpn_protocols=[ALPN],
                                      idle_timeout=60.0)
    cfg.max_stream_data = 16 << 20  # as ssh3's client and server
    cfg.max_data = 32 << 20
    return cfg


def _protocol_class(backend: Any, on_event: Any) -> type:
    base = backend.protocol_class

    class Raw(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.sent = asyncio.Event()  # set after every transmit: acks may have freed room
            self.events: asyncio.Queue[Any] = asyncio.Queue()

        def quic_event_received(self, event: Any) -> None:
            on_event(self, event)

        def transmit(self) -> None:
            super().transmit()
            self.sent.set()

        def datagrams_received(self, data: list[bytes], addr: Any) -> None:
            # a burst from the server's batched transport, as SSH3Protocol takes it
            batch = getattr(super(), "datagrams_received", None)
            if batch is not None:
                batch(data, addr)
                return
            now = self._loop.time()
            for datagram in data:
                self._quic.receive_datagram(datagram, addr, now=now)
            self._process_events()
            self.transmit()

    return Raw


async def serve(args: argparse.Namespace) -> None:
    backend = get_backend(args.backend)
    ev = backend.quic_events
    hashes: dict[tuple[int, int], Any] = {}

    def on_event(proto: Any, event: Any) -> None:
        if isinstance(event, ev.StreamDataReceived):
            key = (id(proto), event.stream_id)
            h = hashes.setdefault(key, [hashlib.sha256(), 0])
            h[0].update(event.data)
            h[1] += len(event.data)
            if event.end_stream:
                del hashes[key]
                proto._quic.send_stream_data(event.stream_id,
                                             f"{h[0].hexdigest()} {h[1]}\n".encode(),
                                             end_stream=True)
                proto.transmit()

    cfg = _configuration(backend, False)
    cfg.load_cert_chain(args.cert, args.key)
    server = await backend.serve("127.0.0.1", 0, configuration=cfg,
                                 create_protocol=_protocol_class(backend, on_event))
    port = server._transport.get_extra_info("sockname")[1]
    print(f"PORT {port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    server.close()


async def send(args: argparse.Namespace) -> None:
    backend = get_backend(args.backend)
    ev = backend.quic_events
    reply = bytearray()
    done = asyncio.Event()

    def on_event(proto: Any, event: Any) -> None:
        if isinstance(event, ev.StreamDataReceived):
            reply.extend(event.data)
            if event.end_stream:
                done.set()
        elif isinstance(event, ev.ConnectionTerminated):
            done.set()

    cfg = _configuration(backend, True)
    cfg.verify_mode = ssl.CERT_NONE
    backend.configure_client(cfg)
    async with backend.connect("127.0.0.1", args.port, configuration=cfg,
                               create_protocol=_protocol_class(backend, on_event)) as proto:
        quic = proto._quic
        sid = quic.get_next_available_stream_id()
        start = time.perf_counter()
        with open(args.file, "rb") as f:
            while block := f.read(CHUNK):
                quic.send_stream_data(sid, block)
                if backend.send_buffer_size(quic, sid) > HIGH_WATER:
                    # what the congestion window allows goes now; with that much
                    # unacknowledged, ACKs are on their way and each one transmits
                    proto.transmit()
                    while backend.send_buffer_size(quic, sid) > HIGH_WATER // 2:
                        proto.sent.clear()
                        await proto.sent.wait()
        quic.send_stream_data(sid, b"", end_stream=True)
        proto.transmit()
        await asyncio.wait_for(done.wait(), args.timeout)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "reply": reply.decode(errors="replace").strip()}),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("serve", "send"))
    ap.add_argument("--backend", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--port", type=int)
    ap.add_argument("--file")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    asyncio.run(serve(args) if args.mode == "serve" else send(args))


if __name__ == "__main__":
    main()
