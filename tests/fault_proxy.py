"""A real TCP/HTTP proxy that injects faults in front of an OpenAI-compatible server.

    python -m tests.fault_proxy --port P --upstream http://127.0.0.1:U --script 500,close --then pass

Each incoming request takes the next fault of `--script`, then `--then` forever:
`pass` (forward to the upstream server), `500`, `stall` (never answer), `close` (drop the
connection without a response) or `malformed` (HTTP 200 with a truncated JSON body). One line per
request is appended to `--log` so tests can count what the client sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import httpx


class FaultProxy:
    def __init__(self, upstream: str, script: list[str], then: str, log: Path) -> None:
        self.upstream, self.script, self.then, self.log = upstream.rstrip("/"), script, then, log
        self.client = httpx.AsyncClient(timeout=600)

    def next_fault(self) -> str:
        return self.script.pop(0) if self.script else self.then

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                headers = dict(
                    line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
                )
                length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
                body = await reader.readexactly(length) if length else b""
                fault = self.next_fault() if path.endswith("/chat/completions") else "pass"
                with open(self.log, "a") as fh:
                    fh.write(json.dumps({"path": path, "fault": fault}) + "\n")
                if fault == "close":
                    writer.transport.abort()
                    return
                if fault == "stall":
                    await asyncio.sleep(3600)
                    return
                if fault == "500":
                    status, payload = 500, b'{"error": "injected"}'
                elif fault == "malformed":
                    status, payload = 200, b'{"choices": [{"message": {"content": "Level 3'
                else:
                    response = await self.client.request(method, self.upstream + path, content=body,
                                                          headers={"content-type": "application/json"})
                    status, payload = response.status_code, response.content
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="http://127.0.0.1:9")
    parser.add_argument("--script", default="")
    parser.add_argument("--then", default="pass")
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    proxy = FaultProxy(args.upstream, [f for f in args.script.split(",") if f], args.then, args.log)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
