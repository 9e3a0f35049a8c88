"""Open-loop HTTP/1.1 load: requests leave at a fixed arrival rate whatever the server does,
and latency counts from the scheduled send time, so a slow server cannot slow the load down
and hide its own queueing (no coordinated omission). Raw asyncio streams over a keep-alive
pool that opens connections as needed; a concurrent probe times GET /health every 100 ms."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import resource
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.corpus import build_corpus
from bench.stats import percentile

REJECT_STATUSES = (429, 503)


@dataclass(slots=True)
class Outcome:
    """One request. `latency_s` runs from the scheduled send to the last byte of the answer."""

    stream: str
    at_s: float  # scheduled send, seconds from the start of the run
    latency_s: float | None = None
    status: int | None = None
    failure: str | None = None  # reset | eof | timeout | connect | protocol
    retry_after_ok: bool | None = None  # 429/503 only: Retry-After an integer 1..60
    json_error: bool | None = None  # non-2xx only: a JSON object with "error"
    error_type: str | None = None


@dataclass(frozen=True)
class Stream:
    """Arrivals at `rate` per second for `seconds`, segment after segment (rate 0: a pause)."""

    name: str
    segments: Sequence[tuple[float, float]]
    bodies: Sequence[bytes]

    def arrivals(self) -> Iterator[float]:
        start = 0.0
        for rate, seconds in self.segments:
            if rate > 0:
                yield from (start + i / rate for i in range(int(rate * seconds)))
            start += seconds

    @property
    def seconds(self) -> float:
        return sum(seconds for _, seconds in self.segments)


@dataclass
class LoadRun:
    outcomes: list[Outcome]
    health: list[Outcome]
    samples: list[dict[str, float]]  # the server's RSS, threads and open files, once a second
    seconds: float
    generator_cpu_s: float
    peak_connections: int
    stale_connections: int  # idle ones the server had closed: dropped, not reused
    send_lag_p99_ms: float  # how late the generator sent (its own saturation)

    def of(self, stream: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.stream == stream]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    close: bool


class ConnectFailed(OSError):
    """The TCP connection could not be opened."""


def parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, lower-cased headers, and whether HTTP/1.1 keep-alive is off."""
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError("bad header line")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
    return int(rest[:3]), headers, close


async def read_response(reader: asyncio.StreamReader) -> Response:
    status, headers, close = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")  # the (empty) trailer
        body = b"".join(parts)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body, close = await reader.read(), True
    return Response(status, headers, body, close)


def retry_after_ok(value: str | None) -> bool:
    return value is not None and value.isdigit() and 1 <= int(value) <= 60


def judge(outcome: Outcome, response: Response) -> None:
    """Record the answer; an error answer must carry the JSON envelope (and Retry-After)."""
    outcome.status = response.status
    if 200 <= response.status < 300:
        return
    if response.status in REJECT_STATUSES:
        outcome.retry_after_ok = retry_after_ok(response.headers.get("retry-after"))
    try:
        data = json.loads(response.body)
    except ValueError:
        data = None
    outcome.json_error = isinstance(data, dict) and "error" in data
    if isinstance(data, dict) and isinstance(data.get("error_type"), str):
        outcome.error_type = data["error_type"][:40]


class Pool:
    """Keep-alive connections to one address; a new one whenever none is idle."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.peak = 0
        self.stale = 0  # idle connections found closed by the server, never reused

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            conn = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise ConnectFailed(str(exc)) from exc
        self.open += 1
        self.peak = max(self.peak, self.open)
        return conn

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self.open -= 1
        writer.close()

    async def exchange(self, request: bytes, timeout_s: float) -> Response:
        async with asyncio.timeout(timeout_s):
            reader, writer = await self._take()
            try:
                writer.write(request)
                response = await read_response(reader)
            except BaseException:
                self._close(writer)
                raise
        if response.close:
            self._close(writer)
        else:
            self.idle.append((reader, writer))
        return response

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The most recent idle connection the server has not closed (what every HTTP client
        library checks before reusing one: the server ends idle ones after its keep-alive
        timeout), else a new one."""
        while self.idle:
            reader, writer = self.idle.pop()
            if not reader.at_eof():
                return reader, writer
            self._close(writer)
            self.stale += 1
        return await self._connect()

    def close_all(self) -> None:
        while self.idle:
            self._close(self.idle.pop()[1])


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectFailed):
        return "connect"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "eof"  # closed before a complete answer
    if isinstance(exc, (ConnectionError, OSError)):
        return "reset"
    return "protocol"


def proc_sample(pid: int) -> dict[str, float] | None:
    """RSS (MiB), threads and open files of a process, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "threads": int(fields["Threads"]),
        "fds": fds,
    }


def request_bytes(host: str, path: str, body: bytes | None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def texts(kind: str, count: int = 200) -> list[str]:
    """`short`: the benchmark corpus (5-60 words); `long`: corpus sentences joined to about
    335 words (about 400 tokens on the default model's tokenizer)."""
    corpus = [s.text for s in build_corpus()]
    if kind == "short":
        return corpus
    if kind != "long":
        raise ValueError(f"texts: short or long, not {kind!r}")
    out, words = [], itertools.cycle(corpus)
    for _ in range(count):
        parts: list[str] = []
        while sum(len(p.split()) for p in parts) < 335:
            parts.append(next(words))
        out.append(" ".join(parts))
    return out


def bodies(kind: str) -> list[bytes]:
    return [json.dumps({"text": t}).encode() for t in texts(kind)]


def raise_open_file_limit() -> None:
    """An overloaded server holds many connections open; each one is a file here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _load(
    url: str,
    streams: Sequence[Stream],
    timeout_s: float,
    pid: int | None,
    health_every_s: float | None,
) -> LoadRun:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    hostport, prefix = f"{host}:{port}", parts.path.rstrip("/")
    pool, health_pool = Pool(host, port), Pool(host, port)
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    t0 = clock() + 0.05
    total_s = max(s.seconds for s in streams)
    outcomes: list[Outcome] = []
    health: list[Outcome] = []
    samples: list[dict[str, float]] = []
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(target: Pool, outcome: Outcome, request: bytes) -> None:
        lags.append(clock() - t0 - outcome.at_s)
        try:
            judge(outcome, await target.exchange(request, timeout_s))
            outcome.latency_s = clock() - t0 - outcome.at_s
        except Exception as exc:  # every failure is a result here, not an error
            outcome.failure = failure_kind(exc)

    async def until(at_s: float) -> None:
        if (delay := t0 + at_s - clock()) > 0:
            await asyncio.sleep(delay)

    def launch(target: Pool, outcome: Outcome, request: bytes) -> None:
        task = asyncio.create_task(one(target, outcome, request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def drive(stream: Stream) -> None:
        requests = itertools.cycle(
            [request_bytes(hostport, f"{prefix}/predict", b) for b in stream.bodies]
        )
        for at_s in stream.arrivals():
            await until(at_s)
            outcome = Outcome(stream.name, at_s)
            outcomes.append(outcome)
            launch(pool, outcome, next(requests))

    async def probe_health(every_s: float) -> None:
        request = request_bytes(hostport, f"{prefix}/health", None)
        for i in range(int(total_s / every_s)):
            await until(i * every_s)
            outcome = Outcome("health", i * every_s)
            health.append(outcome)
            launch(health_pool, outcome, request)

    async def sample(server_pid: int) -> None:
        for i in itertools.count():
            if (found := proc_sample(server_pid)) is not None:
                samples.append({"t_s": round(clock() - t0, 2)} | found)
            await until(i + 1.0)

    cpu0 = time.process_time()
    sampler = asyncio.create_task(sample(pid)) if pid else None
    drivers = [drive(s) for s in streams]
    if health_every_s:
        drivers.append(probe_health(health_every_s))
    await asyncio.gather(*drivers)
    while tasks:  # every request ends: answered, failed, or timed out by the client
        await asyncio.wait(set(tasks))
    if sampler is not None:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    pool.close_all()
    health_pool.close_all()
    return LoadRun(
        outcomes=outcomes,
        health=health,
        samples=samples,
        seconds=total_s,
        generator_cpu_s=time.process_time() - cpu0,
        peak_connections=pool.peak,
        stale_connections=pool.stale,
        send_lag_p99_ms=round(percentile(lags, 99) * 1000, 1) if lags else 0.0,
    )


def run_load(
    url: str,
    streams: Sequence[Stream],
    *,
    timeout_s: float = 30.0,
    pid: int | None = None,
    health_every_s: float | None = 0.1,
) -> LoadRun:
    """Drive `streams` against `url` (its /predict), probing /health, sampling `pid`."""
    raise_open_file_limit()
    try:
        import uvloop  # the app's own event loop: less CPU per request than asyncio's
    except ImportError:
        return asyncio.run(_load(url, streams, timeout_s, pid, health_every_s))
    return uvloop.run(_load(url, streams, timeout_s, pid, health_every_s))


async def _closed(url: str, body_list: Sequence[bytes], concurrency: int, seconds: float) -> int:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pool = Pool(host, port)
    requests = itertools.cycle(
        [request_bytes(f"{host}:{port}", f"{parts.path.rstrip('/')}/predict", b) for b in body_list]
    )
    end, ok = time.monotonic() + seconds, 0

    async def worker() -> None:
        nonlocal ok
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                status = (await pool.exchange(next(requests), 30.0)).status
                ok += status == 200  # after the await: `ok += await ...` would lose counts

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    pool.close_all()
    return ok


def capacity(url: str, body_list: Sequence[bytes], seconds: float, concurrency: int = 32) -> float:
    """200s per second with `concurrency` requests always outstanding: a closed loop, so it
    measures the server's throughput whatever its admission does past that."""
    return asyncio.run(_closed(url, body_list, concurrency, seconds)) / seconds


def summarize(outcomes: Sequence[Outcome], seconds: float) -> dict[str, Any]:
    """Counts by status and failure, latency of 2xx and of rejections, goodput, and the
    contract of error answers (JSON envelope; Retry-After on 429/503)."""
    statuses: dict[str, int] = {}
    failures: dict[str, int] = {}
    for o in outcomes:
        if o.failure:
            failures[o.failure] = failures.get(o.failure, 0) + 1
        else:
            statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    ok = [o.latency_s for o in outcomes if o.status and 200 <= o.status < 300 and o.latency_s]
    rejects = [o.latency_s for o in outcomes if o.status in REJECT_STATUSES and o.latency_s]
    errors = [o for o in outcomes if o.status is not None and not 200 <= o.status < 300]

    def ms(values: list[float], q: float) -> float | None:
        return round(percentile(values, q) * 1000, 1) if values else None

    return {
        "sent": len(outcomes),
        "statuses": dict(sorted(statuses.items())),
        "failures": dict(sorted(failures.items())),
        "non_2xx": len(errors),
        "lost": sum(failures.values()),
        "ok_p50_ms": ms(ok, 50),
        "ok_p95_ms": ms(ok, 95),
        "ok_p99_ms": ms(ok, 99),
        "reject_p99_ms": ms(rejects, 99),
        "goodput_rps": round(len(ok) / seconds, 2) if seconds else 0.0,
        "retry_after_missing": sum(1 for o in errors if o.retry_after_ok is False),
        "error_not_json": sum(1 for o in errors if not o.json_error),
        "error_types": dict(sorted(Counter(o.error_type or "?" for o in errors).items())),
    }
