"""A minimal, fast SMTP sink for benchmarks: accepts everything, counts messages, keeps nothing.

Run as a separate process so it does not share the GIL with what is measured:
    python bench/sink.py            # prints "PORT <n>" on stdout, serves until stdin closes
    python bench/sink.py --aiosmtpd # the same, with our aiosmtpd-based test server
    python bench/sink.py --delay 5  # answers each message's data after 5 ms (a smarthost over a network)
Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ['main']


class SinkProtocol(asyncio.Protocol):
    counter = [0]
    delay = 0.0  # seconds before the reply to a message's data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b''
        self.in_data = False
        self.held: list[bytes] | None = None  # replies waiting behind a delayed one (order is kept)
        transport.write(b'220 sink ESMTP\r\n')

    def write(self, reply: bytes) -> None:
        if self.held is not None:
            self.held.append(reply)
        else:
            self.transport.write(reply)

    def write_later(self, reply: bytes) -> None:
        if not self.delay:
            self.write(reply)
            return
        if self.held is None:
            self.held = []
            asyncio.get_running_loop().call_later(self.delay, self.release, reply)
        else:
            self.held.append(reply)  # (a client that pipelines past the final dot)

    def release(self, reply: bytes) -> None:
        held, self.held = self.held or [], None
        if not self.transport.is_closing():
            self.transport.write(reply + b''.join(held))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b'\r\n.\r\n')
                if end < 0:
                    # keep only a tail long enough to find the terminator next time
                    self.buffer = self.buffer[-4:]
                    return
                self.buffer = self.buffer[end + 5:]
                self.in_data = False
                self.counter[0] += 1
                self.write_later(b'250 2.0.0 queued\r\n')
                continue
            line_end = self.buffer.find(b'\r\n')
            if line_end < 0:
                return
            line, self.buffer = self.buffer[:line_end], self.buffer[line_end + 2:]
            verb = line[:4].upper()
            if verb == b'EHLO':
                self.write(b'250-sink\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SIZE 52428800\r\n')
            elif verb == b'DATA':
                self.in_data = True
                # a message may start with ".\r\n"-free content; the terminator search needs the CRLF before it
                self.buffer = b'\r\n' + self.buffer
                self.write(b'354 go ahead\r\n')
            elif verb == b'QUIT':
                self.write(b'221 bye\r\n')
                if self.held is None:
                    self.transport.close()
                return
            else:
                self.write(b'250 OK\r\n')


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]
    print(f'PORT {port}', flush=True)
    # stop when the parent closes our stdin (or dies)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    print(f'RECEIVED {SinkProtocol.counter[0]}', flush=True)


def serve_aiosmtpd() -> None:
    """The project's aiosmtpd test server: a complete SMTP implementation, like a small real MTA."""
    from schwarz.mailqueue.testutils import SMTPTestServer

    with SMTPTestServer() as server:
        print(f'PORT {server.port}', flush=True)
        sys.stdin.read()
        print(f'RECEIVED {len(server.received)}', flush=True)


def main() -> None:
    if sys.argv[1:] == ['--aiosmtpd']:
        serve_aiosmtpd()
    else:
        if sys.argv[1:2] == ['--delay']:
            SinkProtocol.delay = float(sys.argv[2]) / 1000
        asyncio.run(serve())


if __name__ == '__main__':
    main()
