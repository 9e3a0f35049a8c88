"""A raw HTTP/1.1 client over one socket, for tests that must see exactly what the server
writes: one response at a time (pipelined answers stay buffered), and a close seen as such."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


class ClosedEarly(Exception):
    """The server closed (or reset) the connection before a complete response."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self, what: str) -> None:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionError as exc:
            raise ClosedEarly(f"{exc!r} {what}") from exc
        if not chunk:
            raise ClosedEarly(f"closed {what}: {self.buffer[:200]!r}")
        self.buffer += chunk

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buffer:
            self._more("before a complete response")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._more("inside the body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(int(lines[0].split()[1]), headers, body)

    def closed_by_server(self, within_s: float = 3.0) -> bool:
        """True once the server closes (EOF, or a reset); False if it is still open."""
        self.sock.settimeout(within_s)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
