"""The fleet simulator's HTTP client: HTTP/1.1 over a fixed set of keep-alive connections to one
server, in asyncio. Not httpx: its pool checks every connection's expiry on every request, which
at 32 connections cost the simulator more CPU than the control plane spent answering (py-spy on
bench/fleet.py), so the figures measured the client. This speaks only what gunicorn answers the
node API with: a status line, headers, a Content-Length or chunked body."""

import asyncio
import json
from dataclasses import dataclass


class TransportError(Exception):
    """The connection broke or the server answered something this client does not read."""


@dataclass
class Response:
    status_code: int
    content: bytes
    headers: dict[str, str]  # lower-cased names

    def json(self):
        return json.loads(self.content)


class KeepAliveClient:
    def __init__(self, *, host: str, port: int, connections: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.idle: asyncio.Queue = asyncio.Queue()
        for _ in range(connections):
            self.idle.put_nowait(None)  # a slot: connected on first use, again after a failure

    async def request(self, method: str, path: str, *, json_body=None, headers: dict | None = None) -> Response:
        """One request on a free connection (waiting for one); raises TransportError."""
        body = b"" if json_body is None else json.dumps(json_body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        if json_body is not None:
            head.append("Content-Type: application/json")
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        streams = await self.idle.get()
        try:
            if streams is None:
                streams = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
            response, keep = await asyncio.wait_for(self._exchange(streams, raw), self.timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, TransportError) as error:
            if streams is not None:
                streams[1].close()
            self.idle.put_nowait(None)
            raise TransportError(repr(error)) from error
        if not keep:
            streams[1].close()
            streams = None
        self.idle.put_nowait(streams)
        return response

    @staticmethod
    async def _exchange(streams, raw: bytes) -> tuple[Response, bool]:
        reader, writer = streams
        writer.write(raw)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise TransportError("connection closed")
        status = int(status_line.split(b" ", 2)[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close"
        if "chunked" not in headers.get("transfer-encoding", "").lower():
            return Response(status, await reader.readexactly(int(headers.get("content-length", 0))), headers), keep
        parts = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()  # the empty trailer
        return Response(status, b"".join(parts), headers), keep

    async def aclose(self) -> None:
        while not self.idle.empty():
            streams = self.idle.get_nowait()
            if streams is not None:
                streams[1].close()
