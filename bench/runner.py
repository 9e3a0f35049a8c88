"""`python -m bench run`: ceiling, cold start, baseline and batched sweeps, open loop, Nginx."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.corpus import build_corpus, describe, request_bodies, write_bodies
from bench.nginxlocal import LocalNginx, nginx_version
from bench.openloop import find_loadtest, loadtest_version, run_openloop
from bench.procmon import ProcessMonitor, find_listener_pid
from bench.promstats import (
    BATCH_SIZE,
    INPUT_TOKENS,
    QUEUE_DEPTH,
    Snapshot,
    fetch_snapshot,
    gauge,
    histogram,
    pending_texts,
    step_metrics,
)
from bench.server import ServerError, ServerProcess
from bench.sysinfo import load_average, machine
from bench.targets import TARGET_CONCURRENCY
from bench.wrkrun import LoadGenError, run_wrk, wrk_version

Log = Callable[[str], None]

# The seeds' design: one request = one forward pass of the model's own (padded) forward, one
# pass at a time, torch's own kernels. UNPADDED=off and ONEDNN_LINEAR=off keep our faster
# forward and Linear kernels out of the baseline; the unbatched_parallel series shows them
# without batching.
BASELINE_ENV = {
    "MAX_BATCH_SIZE": "1",
    "INFERENCE_WORKERS": "1",
    "UNPADDED": "off",
    "ONEDNN_LINEAR": "off",
}


@dataclass
class RunConfig:
    model_path: Path | None
    url: str | None = None
    nginx_url: str | None = None
    nginx_metrics_url: str | None = None
    server_pid: int | None = None
    concurrencies: Sequence[int] = (1, 8, 32, 64)
    step_s: float = 10.0
    warmup_s: float = 2.0
    ceiling_s: float = 5.0
    ceiling_warmup_s: float = 1.0
    open_rates: Sequence[str] = ("0.5x", "0.8x", "1.0x", "1.2x")
    baseline: bool = True
    ceiling: bool = True
    # Rounds of a model-only length-sorted measurement, then c=32 steps on the running
    # server, direct and through Nginx; the ceiling and Nginx targets take the median of
    # their ratios (0: the sweep's figures, bracketed by the measurements around them).
    paired_rounds: int = 5
    torch_threads: int | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    items_per_request: int = 1
    wrk_threads: int = 1
    request_timeout_s: float = 30.0
    corpus_size: int = 600
    corpus_seed: int = 20240611
    quick: bool = False
    out_dir: Path = Path("bench/results")
    stem: str = ""
    command: str = ""
    cwd: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True)
class Proxy:
    """An Nginx to measure through, and what its steps can read of the app behind it."""

    url: str
    label: str
    app_metrics_url: str | None
    # A local proxy fronts the benchmarked server itself (its PID and /metrics apply, and a
    # direct step after the Nginx sweep brackets it); an external one usually another
    # instance, such as the Compose stack's.
    local: bool
    pid: int | None = None

    def app_pid(self, server_pid: int | None) -> int | None:
        """The PID to monitor behind this proxy: only a local one fronts our own server."""
        return server_pid if self.local else None


def parse_rates(specs: Sequence[str], reference_rps: float | None) -> list[float]:
    """'40' is 40 req/s; '0.8x' is 0.8 x the batched c=32 throughput measured in this run."""
    rates: list[float] = []
    for spec in specs:
        s = spec.strip().lower()
        if not s:
            continue
        if s.endswith("x"):
            if reference_rps is None or reference_rps <= 0:
                continue  # nothing to scale against (the sweep did not run or failed)
            rate = float(s[:-1]) * reference_rps
        else:
            rate = float(s)
        if rate <= 0:
            raise ValueError(f"rate must be > 0: {spec!r}")
        rates.append(round(rate, 1))
    return rates


def predict_url(base: str) -> str:
    """Accept either a base URL or a full /predict URL."""
    base = base.rstrip("/")
    return base if base.endswith("/predict") else f"{base}/predict"


def base_of(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/predict")] if url.endswith("/predict") else url


def settle(metrics_url: str | None, max_s: float = 15.0, poll_s: float = 0.25) -> bool:
    """Wait until the server has finished the requests that were in flight when the load
    generator stopped, so the next snapshot belongs to one step only.

    True when every tokenized text was forwarded or rejected, or the server sat idle for a
    second (a text dropped without a rejection count never balances). The default limit
    outlasts the app's 10 s request deadline, after which leftovers are rejected.
    """
    t0 = time.monotonic()
    if metrics_url is None:
        time.sleep(0.5)
        return False
    previous: tuple[float, float] | None = None
    quiet_polls = 0
    while time.monotonic() - t0 < max_s:
        try:
            snap = fetch_snapshot(metrics_url)
        except (OSError, ValueError):
            time.sleep(0.5)
            return False
        pending = pending_texts(snap)
        state = (histogram(snap, INPUT_TOKENS).count, histogram(snap, BATCH_SIZE).total)
        if pending <= 0 and (gauge(snap, QUEUE_DEPTH) or 0.0) <= 0:
            return True
        # Fallback when the counts cannot balance (e.g. a text dropped after tokenizing).
        idle = (gauge(snap, QUEUE_DEPTH) or 0.0) <= 0
        quiet_polls = quiet_polls + 1 if state == previous and idle else 0
        if quiet_polls >= 4:
            return True
        previous = state
        time.sleep(poll_s)
    return False


def _snapshot(metrics_url: str | None, log: Log) -> Snapshot | None:
    if metrics_url is None:
        return None
    try:
        return fetch_snapshot(metrics_url)
    except (OSError, ValueError) as exc:
        log(f"  (metrics unavailable at {metrics_url}: {exc})")
        return None


class Bench:
    """One benchmark run; `result` is the JSON document that gets written."""

    def __init__(self, cfg: RunConfig, log: Log = print) -> None:
        self.cfg = cfg
        self.log = log
        self.raw_dir = (
            cfg.out_dir / "raw" / cfg.stem if cfg.out_dir.name != "raw" else cfg.out_dir / cfg.stem
        )
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        corpus = build_corpus(cfg.corpus_size, cfg.corpus_seed)
        self.texts = [s.text for s in corpus]
        self.bodies_file = write_bodies(
            self.raw_dir / "bodies.jsonl", request_bodies(self.texts, cfg.items_per_request)
        )
        self.workers, self.threads = server_parallelism(cfg.torch_threads, cfg.server_env)
        # Set while a server the tool started is up: says why it is gone, if it is.
        self.server_gone: Callable[[], str | None] = lambda: None
        loadtest_dir = find_loadtest()
        self.result: dict[str, Any] = {
            "tool": "bench",
            "command": cfg.command,
            "quick": cfg.quick,
            "machine": machine(cfg.cwd),
            "settings": {
                "model_path": str(cfg.model_path) if cfg.model_path else None,
                "torch_threads": self.threads,
                "inference_workers": self.workers,
                "concurrencies": list(cfg.concurrencies),
                "step_s": cfg.step_s,
                "warmup_s": cfg.warmup_s,
                "items_per_request": cfg.items_per_request,
                "server_env": cfg.server_env,
                "url": cfg.url,
                "nginx_url": cfg.nginx_url,
            },
            "tools": {
                "wrk": wrk_version(),
                "loadtest": loadtest_version(loadtest_dir),
            },
            "corpus": describe(corpus) | {"seed": cfg.corpus_seed},
            "ceiling": None,
            "series": {},
            "errors": [],
        }

    # ---- pieces -------------------------------------------------------------------------

    def run_ceiling(self, key: str = "ceiling", modes: str | None = None) -> None:
        """Model-only figures into result[key]; run again after the batched sweep as
        "ceiling_after", so the targets can use the machine's speed around the sweep."""
        cfg = self.cfg
        if cfg.model_path is None:
            self.log("ceiling: skipped (no model path)")
            return
        self.log(
            f"ceiling: model-only in a separate process ({self.threads} torch threads"
            f" x {self.workers} stream(s), like the server)"
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ceiling.json"
            cmd = [
                sys.executable,
                "-m",
                "bench",
                "model",
                "--model",
                str(cfg.model_path),
                "--variants",
                ceiling_variant(self.workers, cfg.server_env),
                "--threads",
                str(self.threads),
                "--lone-threads",
                str(lone_pass_threads(self.threads, cfg.server_env)),
                "--seconds",
                str(cfg.ceiling_s),
                "--warmup-s",
                str(cfg.ceiling_warmup_s),
                "--corpus-size",
                str(cfg.corpus_size),
                "--corpus-seed",
                str(cfg.corpus_seed),
                "--json",
                str(out),
            ]
            if "MAX_LENGTH" in cfg.server_env:
                cmd += ["--max-length", cfg.server_env["MAX_LENGTH"]]
            if modes:
                cmd += ["--modes", modes]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cfg.cwd)
            if proc.returncode != 0 or not out.exists():
                msg = f"ceiling failed ({proc.returncode}): {proc.stderr[-800:]}"
                self.log(msg)
                self.result["errors"].append(msg)
                return
            self.result[key] = json.loads(out.read_text(encoding="utf-8"))
        for name, m in self.result[key]["variants"][0]["modes"].items():
            self.log(
                f"  {name:5s} {m['sentences_per_s']:8.1f} sentences/s"
                f"  padding efficiency {m['padding_efficiency']}"
            )

    def paired(
        self,
        base_url: str,
        metrics_url: str | None,
        pid: int | None,
        proxy: Proxy | None = None,
    ) -> None:
        """The ratio targets' figures, `paired_rounds` times: the length-sorted model-only
        rate (separate process, the server idle), then a c=32 step on the server direct and,
        with an Nginx, one through it, seconds apart. The targets take the median of the
        rounds' ratios.

        This VM's speed drifts 10-20 % within minutes: the sweep's c=32 step and the
        ceilings around it are minutes apart, and two runs of one commit gave that ratio as
        74 % and 87 %; a lone slow phase once put one model-only figure at 260 instead of
        370-440 sentences/s. Rounds are seconds apart, and a median ignores one bad round."""
        cfg = self.cfg
        with_ceiling = cfg.ceiling and cfg.model_path is not None
        if cfg.paired_rounds <= 0 or not (with_ceiling or proxy):
            return
        rounds: list[dict[str, Any]] = self.result.setdefault("paired", [])
        for index in range(cfg.paired_rounds):
            if self._server_died("paired"):
                return
            self.log(f"paired round {index + 1}/{cfg.paired_rounds}")
            record: dict[str, Any] = {}
            if with_ceiling:
                key = f"paired_ceiling_{index}"
                self.run_ceiling(key, modes="b32s")
                ceiling = self.result.pop(key, None)
                if ceiling is not None:
                    modes = ceiling["variants"][0]["modes"]
                    record["ceiling_sentences_per_s"] = float(modes["b32s"]["sentences_per_s"])
            try:
                direct = self.closed_step(
                    predict_url(base_url), metrics_url, pid, TARGET_CONCURRENCY
                )
                self._log_step(direct)
                record["step"] = direct
                if proxy:
                    via = self.closed_step(
                        predict_url(proxy.url),
                        proxy.app_metrics_url,
                        proxy.app_pid(pid),
                        TARGET_CONCURRENCY,
                        proxy.pid,
                    )
                    self._log_step(via)
                    record["nginx_step"] = via
            except LoadGenError as exc:
                self.result["errors"].append(f"paired round {index + 1}: {exc}")
                continue
            rounds.append(pair_ratios(record))

    def closed_step(
        self,
        url: str,
        metrics_url: str | None,
        pid: int | None,
        concurrency: int,
        proxy_pid: int | None = None,
    ) -> dict[str, Any]:
        cfg = self.cfg

        def load(seconds: float) -> dict[str, Any]:
            return run_wrk(
                url,
                self.bodies_file,
                concurrency,
                seconds,
                threads=cfg.wrk_threads,
                timeout_s=cfg.request_timeout_s,
                items_per_request=cfg.items_per_request,
            )

        if cfg.warmup_s > 0:
            load(cfg.warmup_s)
        measured = self._measured(metrics_url, pid, proxy_pid, lambda: load(cfg.step_s))
        return {"kind": "closed", "concurrency": concurrency, **measured}

    def open_step(
        self, url: str, metrics_url: str | None, pid: int | None, rate: float
    ) -> dict[str, Any]:
        cfg = self.cfg
        measured = self._measured(
            metrics_url,
            pid,
            None,
            lambda: run_openloop(
                url,
                self.bodies_file,
                rate,
                cfg.step_s,
                timeout_s=cfg.request_timeout_s,
                items_per_request=cfg.items_per_request,
            ),
        )
        measured.pop("proxy")
        return {"kind": "open", **measured}

    def _measured(
        self,
        metrics_url: str | None,
        pid: int | None,
        proxy_pid: int | None,
        load: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        """Run one load step with the server's (and proxy's) CPU and RSS monitored and its
        /metrics differenced around it; waits for stragglers before the after-snapshot."""
        clean_start = settle(metrics_url)
        before = _snapshot(metrics_url, self.log)
        monitors = [ProcessMonitor(p) if p else None for p in (pid, proxy_pid)]
        for monitor in monitors:
            if monitor:
                monitor.start()
        step = load()
        server, proxy = (monitor.stop() if monitor else None for monitor in monitors)
        clean_end = settle(metrics_url)
        after = _snapshot(metrics_url, self.log)
        return {
            **step,
            "server": server,
            "proxy": proxy,
            "server_metrics": (
                step_metrics(before, after, clean=clean_start and clean_end)
                if before and after
                else None
            ),
        }

    def sweep(
        self,
        name: str,
        label: str,
        base_url: str,
        metrics_url: str | None,
        pid: int | None,
        proxy_pid: int | None = None,
        concurrencies: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        series = self.result["series"].setdefault(
            name, {"label": label, "url": base_url, "steps": []}
        )
        for c in concurrencies or self.cfg.concurrencies:
            if self._server_died(name):
                break
            try:
                step = self.closed_step(predict_url(base_url), metrics_url, pid, c, proxy_pid)
            except LoadGenError as exc:
                msg = f"{name} c={c}: {exc}"
                self.log("  " + msg)
                self.result["errors"].append(msg)
                continue
            series["steps"].append(step)
            self._log_step(step)
        return dict(series)

    def open_loop(
        self, base_url: str, metrics_url: str | None, pid: int | None, reference: float | None
    ) -> None:
        try:
            rates = parse_rates(self.cfg.open_rates, reference)
        except ValueError as exc:
            self.result["errors"].append(str(exc))
            return
        if not rates:
            return
        if find_loadtest() is None:
            msg = "open loop skipped: `npm install -g loadtest@8.2.1` not found"
            self.log(msg)
            self.result["errors"].append(msg)
            return
        series = self.result["series"].setdefault(
            "open_loop",
            {"label": "batched server, open loop (loadtest)", "url": base_url, "steps": []},
        )
        self.log(f"open loop: rates {rates} req/s")
        for rate in rates:
            if self._server_died("open loop"):
                break
            try:
                step = self.open_step(predict_url(base_url), metrics_url, pid, rate)
            except (LoadGenError, subprocess.TimeoutExpired) as exc:
                msg = f"open loop {rate}/s: {exc}"
                self.log("  " + msg)
                self.result["errors"].append(msg)
                continue
            series["steps"].append(step)
            self._log_step(step)

    def _server_died(self, where: str) -> bool:
        reason = self.server_gone()
        if reason is None:
            return False
        msg = f"{where}: {reason}; remaining steps skipped"
        self.log("  " + msg)
        self.result["errors"].append(msg)
        return True

    def _log_step(self, step: dict[str, Any]) -> None:
        lat = step["latency_ms"]
        head = (
            f"c={step['concurrency']:<3d}"
            if step["kind"] == "closed"
            else f"rate={step['offered_rate']:<6}"
        )
        extra = ""
        sm = step.get("server_metrics")
        if sm and sm["batch_size"]["mean"] is not None:
            extra = (
                f" batch {sm['batch_size']['mean']:.1f}"
                f" pad {sm['padding_efficiency_token_weighted']}"
            )
        cpu = step.get("server") or {}
        self.log(
            f"  {head} {step['ok_requests_per_s']:7.1f} ok req/s"
            f" {step['sentences_per_s']:7.1f} sent/s  p50 {lat['p50']} p99 {lat['p99']} ms"
            f"  statuses {step['statuses']}{extra}"
            f" server cpu {cpu.get('cpu_cores')} gen cpu {step['generator']['cpu_cores']}"
        )

    def with_server(
        self, name: str, label: str, env: dict[str, str], body: Callable[[ServerProcess], object]
    ) -> None:
        """Start `python -m app` with `env`, time its cold start, run `body`, SIGTERM it.

        A server that fails to start is recorded as an error; the run goes on (the report
        then says SKIP for the targets that needed it).
        """
        assert self.cfg.model_path is not None
        full_env = {"MODEL_PATH": str(self.cfg.model_path)}
        if self.cfg.torch_threads:
            full_env["TORCH_THREADS"] = str(self.cfg.torch_threads)
        full_env.update(env)
        server = ServerProcess(full_env, self.raw_dir / f"server-{name}.log", cwd=self.cfg.cwd)
        series = self.result["series"].setdefault(
            name, {"label": label, "url": server.base_url, "steps": []}
        )
        series["server_env"] = full_env
        self.log(f"{name}: starting `python -m app` with {env or 'defaults'}")
        server.start()

        def gone() -> str | None:
            code = server.proc.poll() if server.proc else None
            if code is None:
                return None
            return f"the server exited with {code} during the run (signalled from outside?)"

        self.server_gone = gone
        try:
            cold = server.wait_ready()
            series["cold_start"] = cold
            self.log(f"  ready after {cold['to_ready_s']} s, RSS {cold['rss_mib_at_ready']} MiB")
            body(server)
            # Memory after all the load, so growth under load is visible.
            series["rss_mib_after_load"] = _rss_mib(server.pid)
        except ServerError as exc:
            msg = f"{name}: {exc}"
            self.log("  " + msg)
            self.result["errors"].append(msg)
        finally:
            self.server_gone = lambda: None
            info = server.stop(timeout_s=60)
            series["stop"] = info
            self.log(f"  stopped: {info}")

    # ---- the whole run ----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.monotonic()
        if cfg.ceiling:
            self.run_ceiling()
        reference: float | None = None
        if cfg.url:
            base = base_of(cfg.url)
            pid = cfg.server_pid or _local_pid(base)
            self.log(f"batched: existing server at {base} (pid {pid})")
            series = self.sweep(
                "batched", "server at --url (closed loop, wrk)", base, base + "/metrics", pid
            )
            reference = _c32_rps(series)
            self._nginx_and_paired_rounds(base, pid)
            self.open_loop(base, base + "/metrics", pid, reference)
        else:
            if cfg.model_path is None:
                raise SystemExit("no model: set MODEL_PATH or --model (or give --url)")
            if cfg.baseline:
                # The seeds' design: one request = one forward pass, one pass at a time with
                # every core (torch's default threads), one process.
                label = "seeds' design: batching off, one pass at a time on all cores"
                self.with_server(
                    "baseline",
                    label,
                    {**BASELINE_ENV, "TORCH_THREADS": str(_cores())},
                    lambda srv: self.sweep(
                        "baseline", label, srv.base_url, srv.base_url + "/metrics", srv.pid
                    ),
                )
                # Our parallel single-thread passes without batching, to split the speed-up
                # between the two (one concurrency: it is an ablation, not a target).
                label = "batching off, parallel single-thread passes (default workers)"
                self.with_server(
                    "unbatched_parallel",
                    label,
                    {"MAX_BATCH_SIZE": "1"},
                    lambda srv: self.sweep(
                        "unbatched_parallel",
                        label,
                        srv.base_url,
                        srv.base_url + "/metrics",
                        srv.pid,
                        concurrencies=(TARGET_CONCURRENCY,),
                    ),
                )
            self.with_server(
                "batched", "batched server (closed loop, wrk)", dict(cfg.server_env), self._batched
            )
            if cfg.ceiling:
                # This VM's speed drifts by 10-20 % within minutes: bracket the sweep.
                self.log("ceiling again, after the batched sweep")
                self.run_ceiling("ceiling_after")
        self.result["machine"]["load_average_end"] = load_average()
        self.result["wall_s"] = round(time.monotonic() - t0, 1)
        return self.result

    def _batched(self, server: ServerProcess) -> None:
        metrics = server.base_url + "/metrics"
        series = self.sweep(
            "batched", "batched server (closed loop, wrk)", server.base_url, metrics, server.pid
        )
        # Nginx right after the direct sweep: the closer in time, the fairer the ratio.
        self._nginx_and_paired_rounds(server.base_url, server.pid)
        self.open_loop(server.base_url, metrics, server.pid, _c32_rps(series))

    def _nginx_and_paired_rounds(self, direct_base: str, pid: int | None) -> None:
        """The Nginx sweep (if any), then the paired rounds, through that Nginx too."""
        metrics = direct_base + "/metrics"
        with self._proxy(direct_base) as proxy:
            if proxy is not None:
                self.sweep(
                    "nginx",
                    proxy.label,
                    proxy.url,
                    proxy.app_metrics_url,
                    proxy.app_pid(pid),
                    proxy.pid,
                )
            if proxy is not None and proxy.local:
                # The same server direct again: the sweep's Nginx ratio compares with the
                # mean of the direct steps before and after, as this VM's speed drifts.
                self.sweep(
                    "direct_after",
                    "the same server direct again, right after the Nginx sweep (closed loop, wrk)",
                    direct_base,
                    metrics,
                    pid,
                    concurrencies=(TARGET_CONCURRENCY,),
                )
            self.paired(direct_base, metrics, pid, proxy)

    @contextlib.contextmanager
    def _proxy(self, direct_base: str) -> Iterator[Proxy | None]:
        """The Nginx of --nginx-url: an external one, or a throwaway local one in front of
        direct_base, stopped on exit; None without one or when the local one cannot start."""
        cfg = self.cfg
        if not cfg.nginx_url:
            yield None
            return
        if cfg.nginx_url != "local":
            base = base_of(cfg.nginx_url)
            # The app behind an external Nginx is usually another instance (a container):
            # its /metrics only if the user says where; no CPU figure (its PID is not ours).
            metrics = cfg.nginx_metrics_url
            self.log(f"nginx: {base} (external; app metrics: {metrics or 'none'})")
            yield Proxy(base, "through Nginx at --nginx-url (closed loop, wrk)", metrics, False)
            return
        port = urllib.parse.urlparse(direct_base).port
        if port is None:
            self.result["errors"].append("--nginx-url local needs a local app with a port")
            yield None
            return
        local = LocalNginx(upstream_port=port)
        try:
            local.start()
        except RuntimeError as exc:
            msg = f"local nginx: {exc}"
            self.log(msg)
            self.result["errors"].append(msg)
            yield None
            return
        self.result["tools"]["nginx"] = nginx_version()
        self.log(f"nginx: local proxy {local.base_url} -> {direct_base}")
        try:
            yield Proxy(
                local.base_url,
                "through a local Nginx in front of the same server (closed loop, wrk)",
                direct_base + "/metrics",
                True,
                local.pid,
            )
        finally:
            local.stop()


def pair_ratios(record: dict[str, Any]) -> dict[str, Any]:
    """Add one paired round's figures and ratios (served / model-only, Nginx / direct)."""
    direct = record["step"]
    record["served_sentences_per_s"] = float(direct["sentences_per_s"])
    record["direct_requests_per_s"] = float(direct["ok_requests_per_s"])
    model = record.get("ceiling_sentences_per_s")
    if model:
        record["ratio"] = round(record["served_sentences_per_s"] / model, 4)
    via = record.get("nginx_step")
    if via is not None:
        record["nginx_requests_per_s"] = float(via["ok_requests_per_s"])
        if record["direct_requests_per_s"]:
            record["nginx_ratio"] = round(
                record["nginx_requests_per_s"] / record["direct_requests_per_s"], 4
            )
    return record


def _c32_rps(series: dict[str, Any]) -> float | None:
    steps = [s for s in series.get("steps", []) if s.get("kind") == "closed"]
    if not steps:
        return None
    best = min(steps, key=lambda s: abs(int(s["concurrency"]) - 32))
    return float(best["ok_requests_per_s"]) or None


def _local_pid(base_url: str) -> int | None:
    parsed = urllib.parse.urlparse(base_url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return find_listener_pid(port)


def _rss_mib(pid: int) -> float | None:
    try:
        import psutil

        from bench.procmon import tree_rss_bytes

        return round(tree_rss_bytes(psutil.Process(pid)) / 2**20, 1)
    except Exception:  # the process may be gone; memory is a nice-to-have here
        return None


def _server_setting(server_env: dict[str, str], name: str) -> str:
    """A setting as the started server sees it: --server-env first, then this environment."""
    return server_env.get(name) or os.environ.get(name) or ""


def _server_int(server_env: dict[str, str], name: str) -> int:
    raw = _server_setting(server_env, name)
    return int(raw) if raw.strip().isdigit() else 0


def ceiling_variant(workers: int, server_env: dict[str, str]) -> str:
    """The model-only variant that matches the server's settings (same model, same work)."""

    def setting(name: str) -> str:
        return _server_setting(server_env, name).lower()

    if server_device(server_env) == "cuda":
        # The app's CUDA defaults: float16 unless DTYPE says otherwise, widths padded to 8.
        dtype = {"bfloat16": "bf16", "bf16": "bf16", "float32": "fp32"}.get(
            setting("DTYPE"), "fp16"
        )
        tokens = ["cuda", dtype, "pad8"]
    else:
        tokens = ["fp32"]
        if setting("QUANTIZE") == "int8":
            tokens = ["int8"]
        elif setting("DTYPE") in ("bfloat16", "bf16"):
            tokens = ["bf16"]
        if setting("ONEDNN_LINEAR") == "off":
            tokens.append("aten")
    if workers > 1:
        tokens.append(f"w{workers}")
    return "+".join(tokens)


def server_device(server_env: dict[str, str]) -> str:
    """ "cuda" or "cpu", as the app resolves DEVICE (auto: CUDA when torch sees a GPU)."""
    requested = (_server_setting(server_env, "DEVICE") or "auto").lower()
    if requested == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if requested == "cuda" else "cpu"


def server_parallelism(torch_threads: int | None, server_env: dict[str, str]) -> tuple[int, int]:
    """(INFERENCE_WORKERS, torch threads per forward pass) the app will use, derived as
    the app does: TORCH_THREADS if set, else CPU cores / INFERENCE_WORKERS. The ceiling
    runs with the same numbers."""
    from app.classifier import default_workers  # the app's own rule for INFERENCE_WORKERS=0

    workers = _server_int(server_env, "INFERENCE_WORKERS") or default_workers(
        server_device(server_env)
    )
    threads = (
        torch_threads or _server_int(server_env, "TORCH_THREADS") or max(1, _cores() // workers)
    )
    return workers, threads


def lone_pass_threads(threads: int, server_env: dict[str, str]) -> int:
    """Threads the app gives a pass that runs alone: ALONE_PASS_THREADS, else TORCH_THREADS."""
    return max(threads, _server_int(server_env, "ALONE_PASS_THREADS"))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
