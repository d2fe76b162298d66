"""The floor under fan-out: bare ``transport.write`` calls, no hub, no sessions.

    python -m bench.barewrite PORT      # driven over stdin by bench.fanout

A uvloop server that answers any WebSocket upgrade with a canned 101 and any later
client frame with a canned pong, and otherwise only writes: on the stdin command
``write ROUNDS RATE FRAME_HEX`` it writes the frame once to every connection per
round, ROUNDS rounds paced at RATE rounds/s (as the fan-out run it is the floor of
was), then prints ``done``. The fan-out bench reads this process's CPU around the
command: what the kernel and the event loop cost per write, which no hub can beat.
"""

from __future__ import annotations

import asyncio
import sys
import time

import uvloop

from aicq.protocol import text_frame

SWITCHING = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Accept: bench\r\n\r\n")
PONG = text_frame(b'{"type":"pong","ref":"s"}')


class Peer(asyncio.Protocol):
    def __init__(self, peers: set[asyncio.Transport]):
        self.peers = peers
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.upgraded:
            self.transport.write(PONG)  # the client's readiness ping
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.upgraded = True
            self.transport.write(SWITCHING)
            self.peers.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.peers.discard(self.transport)  # type: ignore[arg-type]


async def write_rounds(peers: set[asyncio.Transport], rounds: int, rate: float, frame: bytes) -> None:
    targets = list(peers)
    started = time.perf_counter()
    for index in range(rounds):
        due = started + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        for transport in targets:
            transport.write(frame)
        if delay <= 0:
            await asyncio.sleep(0)  # behind schedule: still let the loop flush and read


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    peers: set[asyncio.Transport] = set()
    server = await loop.create_server(lambda: Peer(peers), "127.0.0.1", port, backlog=4096)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("listening", flush=True)
    while line := await reader.readline():
        command, rounds, rate, frame = line.decode().split()
        assert command == "write"
        await write_rounds(peers, int(rounds), float(rate), bytes.fromhex(frame))
        print("done", flush=True)
    server.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
