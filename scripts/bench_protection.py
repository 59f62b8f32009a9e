"""The protection part of `make bench` (issues 4 and 5): the same guest and load under `none`
(`understudy run`), `remus` (25 ms epochs), `llm` and `active`, side by side in one run: throughput and
reply latency under redis-benchmark, single-client round-trip latency on `echo` and `kv`, bytes
replicated per second (both directions), the checkpoint pause, and failover downtime (SIGKILL of
the primary, while its load is seen making progress, to the first answer from the backup, over
many kills).
"""
import os
import random
import re
import socket
import statistics
import subprocess
import time
import urllib.request

from bench_load import answers, cpus_usable, free_port, redis_benchmark, run_lengths, wait_for, wrk
from bench_parse import Metrics, MissingFigure, percentile, ratio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "guests", "build")
MODES = ("none", "remus", "llm", "active")
PROTECTED = MODES[1:]


class Protected:
    """`understudy run` (mode none), or a backup and a primary in `mode`, serving `guest`; each
    process serves its own --metrics."""

    def __init__(self, bin_path, guest, mode, guest_arguments=(), options=(), backup_options=(),
                 channel=("--insecure-replication",), coordination=lambda name: ()):
        """`channel`: the replication channel's flags (plain TCP unless told otherwise);
        `coordination(name)`: the flags that fence a machine called `name` (none: unfenced)."""
        self.port, self.metrics_port, self.backup_metrics_port = free_port(), free_port(), free_port()
        self.replication = free_port()
        self.logs = []
        self.backup = None
        module = os.path.join(GUESTS, guest + ".wasm")
        listen = ["--listen", f"127.0.0.1:{self.port}", "--metrics", f"127.0.0.1:{self.metrics_port}"]
        if mode == "none":
            self.primary = self._start([bin_path, "run", module, *listen, *options, "--", *guest_arguments])
        else:
            # Plain TCP and no etcd unless asked: the fencing section measures what those cost.
            fence = list(coordination(f"bench-{self.port}"))
            self.backup = self._start([bin_path, "backup", "--replication", f"127.0.0.1:{self.replication}",
                                       "--listen", f"127.0.0.1:{self.port}", *channel, *fence,
                                       "--metrics", f"127.0.0.1:{self.backup_metrics_port}", *backup_options])
            wait_for(lambda: "waiting for a primary" in self._log(1), 60, "the backup")
            self.primary = self._start([bin_path, "primary", module, *listen, "--backup",
                                        f"127.0.0.1:{self.replication}", "--mode", mode, *channel, *fence, *options,
                                        "--", *guest_arguments])
            wait_for(lambda: "the machine is protected" in self._log(2), 120, "protection")
        wait_for(lambda: answers(self.port), 60, "the service")

    def _start(self, command):
        log = open(f"/tmp/understudy-bench-{len(self.logs)}-{os.getpid()}.log", "w+")
        self.logs.append(log)
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def _log(self, index):
        log = self.logs[index - 1]
        log.flush()
        with open(log.name) as handle:
            return handle.read()

    @staticmethod
    def _scrape(port, source):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return Metrics(text, f"the {source}'s --metrics (127.0.0.1:{port})")

    def metrics(self):
        """One scrape of the primary's (or `run`'s) --metrics."""
        return self._scrape(self.metrics_port, "primary")

    def backup_metrics(self):
        """One scrape of the backup's --metrics."""
        if self.backup is None:
            raise MissingFigure("mode none has no backup to scrape")
        return self._scrape(self.backup_metrics_port, "backup")

    def both_metrics(self):
        """(primary, backup) scrapes, one right after the other."""
        return self.metrics(), self.backup_metrics()

    def stop(self):
        for process in (self.primary, self.backup):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()
            os.unlink(log.name)


def redis_ping(port, timeout=2.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        return s.recv(64).startswith(b"+PONG")


def round_trips(port, payload, expect, count, interval=0.0):
    """Single-client request/reply latencies in ms (one connection, one request at a time); with
    `interval`, one request every `interval` seconds (LLM's HighNet: a ping every 10 ms)."""
    samples = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        next_due = time.perf_counter()
        for _ in range(count):
            next_due += interval
            started = time.perf_counter()
            s.sendall(payload)
            got = b""
            while not got.endswith(expect):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                got += chunk
            samples.append((time.perf_counter() - started) * 1000)
            if interval:
                time.sleep(max(0.0, next_due - time.perf_counter()))
    return samples


FAILOVER_LOAD_KEY = "failover:load"
FAILOVER_LOAD_WINDOW_SECONDS = 0.05


def redis_counter(port, key, timeout=5.0):
    """The integer at `key` (0 while unset), read by a GET on a connection of its own."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"*2\r\n$3\r\nGET\r\n${len(key)}\r\n{key}\r\n".encode())
        reply = b""
        while True:
            if reply.startswith(b"$-1\r\n"):
                return 0
            bulk = re.match(rb"\$(\d+)\r\n", reply)
            if bulk and len(reply) >= bulk.end() + int(bulk.group(1)) + 2:
                return int(reply[bulk.end():bulk.end() + int(bulk.group(1))])
            if reply.startswith(b"-") and reply.endswith(b"\r\n"):
                raise RuntimeError(f"GET {key} answered {reply!r}")
            chunk = s.recv(256)
            if not chunk:
                raise RuntimeError(f"the server closed the connection during GET {key} (got {reply!r})")
            reply += chunk


def pause_ms(before, after):
    """Mean suspension pause between two scrapes of one process, or None when it did not suspend."""
    count = after.since(before, "understudy_suspension_pause_count")
    return after.since(before, "understudy_suspension_pause_sum") / count * 1000 if count else None


def sent_bytes(before, after):
    """Bytes both processes sent to each other between two (primary, backup) scrapes: the primary's
    log and state, the backup's answers (its acknowledgements are counted by neither)."""
    return sum(later.since(earlier, "understudy_replicated_bytes") for earlier, later in zip(before, after))


def measure(bin_path, quick, progress):
    rows = {}
    repeats = 2 if quick else 3
    min_seconds = 1.0 if quick else 2.0
    trips = 300 if quick else 1000
    kills = 10 if quick else 20
    pings = 100 if quick else 300
    wrk_seconds = 2 if quick else 4

    def record(key, value):
        rows.setdefault(key, []).append(value)

    for round_number in range(1, repeats + 1):
        for mode in MODES:
            progress(f"protection round {round_number}/{repeats}: kv {mode} (redis-benchmark -c 50, "
                     f"at least {min_seconds} s per test)")
            server = Protected(bin_path, "kv", mode)
            try:
                before = server.both_metrics() if mode != "none" else None
                started = time.perf_counter()
                for test, result in redis_benchmark(server.port, "set,get,incr", min_seconds).items():
                    record(("kv", mode, test), result)
                elapsed = time.perf_counter() - started
                if mode != "none":
                    after = server.both_metrics()
                    record(("kv-bytes-per-s", mode, ""), sent_bytes(before, after) / elapsed)
                    record(("pause-ms", mode, ""), pause_ms(before[0], after[0]))
                progress(f"protection round {round_number}/{repeats}: kv {mode} single-client round trips ({trips})")
                record(("kv-rtt", mode, ""), round_trips(server.port, b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n", trips))
            finally:
                server.stop()
            progress(f"protection round {round_number}/{repeats}: echo {mode} single-client round trips ({trips}), "
                     f"then a ping every 10 ms ({pings})")
            server = Protected(bin_path, "echo", mode)
            try:
                record(("echo-rtt", mode, ""), round_trips(server.port, b"ping\n", b"ping\n", trips))
                record(("echo-highnet", mode, ""), round_trips(server.port, b"ping\n", b"ping\n", pings, interval=0.010))
            finally:
                server.stop()
            progress(f"protection round {round_number}/{repeats}: http {mode} (wrk {wrk_seconds}s)")
            server = Protected(bin_path, "http", mode)
            try:
                record(("http", mode, ""), wrk(server.port, wrk_seconds))
            finally:
                server.stop()
            progress(f"protection round {round_number}/{repeats}: dirty 200 pages/s {mode} (HighSys)")
            server = Protected(bin_path, "dirty", mode, guest_arguments=["200", "64"])
            try:
                time.sleep(0.3)
                before = server.metrics()
                time.sleep(2)
                record(("highsys-pause-ms", mode, ""), pause_ms(before, server.metrics()))
                record(("highsys-status", mode, ""), round_trips(server.port, b"STATUS\n", b"\n", trips // 4))
            finally:
                server.stop()

    rng = random.Random(4)
    for mode in PROTECTED:
        for kill in range(1, kills + 1):
            progress(f"failover {mode}: kill {kill}/{kills}")
            downtime, incrs = failover(bin_path, mode, rng, f"failover {mode}, kill {kill}")
            record(("failover-load-incrs", mode, ""), incrs)
            record(("downtime", mode, ""), downtime)
    return rows


def failover(bin_path, mode, rng, label, **protected):
    """One kill: a kv pair under an INCR load seen running, its primary SIGKILLed; returns the
    milliseconds to the backup's first answer and the INCRs seen in the window before the kill."""
    server = Protected(bin_path, "kv", mode, **protected)
    load = subprocess.Popen(["redis-benchmark", "-p", str(server.port), "-n", "100000000", "-c", "8", "-q",
                             "INCR", FAILOVER_LOAD_KEY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(rng.uniform(0.2, 0.8))
        window_start = redis_counter(server.port, FAILOVER_LOAD_KEY)
        time.sleep(FAILOVER_LOAD_WINDOW_SECONDS)
        at_kill = redis_counter(server.port, FAILOVER_LOAD_KEY)
        if load.poll() is not None or at_kill <= window_start:
            state = "running" if load.poll() is None else f"exited with {load.returncode}"
            raise RuntimeError(f"{label}: the load was not running at the kill: "
                               f"{FAILOVER_LOAD_KEY} went {window_start} → {at_kill} over the last "
                               f"{FAILOVER_LOAD_WINDOW_SECONDS * 1000:.0f} ms; redis-benchmark {state}")
        killed = time.perf_counter()
        server.primary.kill()
        while True:
            try:
                if redis_ping(server.port, timeout=1):
                    break
            except OSError:
                time.sleep(0.0005)
            if time.perf_counter() - killed > 30:
                raise RuntimeError(f"{label}: no takeover after 30 s:\n{server._log(1)}")
        return (time.perf_counter() - killed) * 1000, at_kill - window_start
    finally:
        load.kill()
        load.wait()
        server.stop()


def spread(values, unit=""):
    return f"{statistics.median(values):,.2f}{unit} ({min(values):,.2f} – {max(values):,.2f})"


def pauses(values):
    """Mean suspension pauses of the runs, or "—" when a run did not suspend."""
    if not values or any(v is None for v in values):
        return "— (no suspension in the window)"
    return spread(values)


def report(rows, quick):
    kv_runs = [r for (family, _, _), runs in rows.items() if family == "kv" for r in runs]
    lines = [
        "",
        "## Protection: none, remus, llm and active side by side",
        "",
        "Each mode serves the same guest under the same load, one after the other in each round. `none` is "
        "`understudy run`; the others are `understudy primary --mode M` with `understudy backup` in another "
        f"process on loopback (all on the same {cpus_usable()} CPUs as the load). remus uses 25 ms epochs; llm "
        "streams the event log and checkpoints every 50 ms; active streams the log to a backup that runs it too, "
        "and syncs every 100 ms (the defaults).",
        "",
        f"### kv under `redis-benchmark -c 50 -t set,get,incr` (each test on its own, {run_lengths(kv_runs)})",
        "",
        "| mode | test | requests/s | of none | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for test in ("SET", "GET", "INCR"):
        base_rps = statistics.median([r["rps"] for r in rows[("kv", "none", test)]])
        for mode in MODES:
            runs = rows[("kv", mode, test)]
            rps = [r["rps"] for r in runs]
            lines.append(f"| {mode} | {test} | {spread(rps)} | "
                         f"{ratio(statistics.median(rps), base_rps, f'kv {test} {mode} of none'):.3f} | "
                         f"{statistics.median([r['p50'] for r in runs]):.2f} | "
                         f"{statistics.median([r['p99'] for r in runs]):.2f} |")
    lines += ["", "### Single-client round trip (one connection, one request at a time; all samples of all rounds)", "",
              "| guest | mode | samples | p50 ms | p99 ms | added p50 ms vs none | added p99 ms vs none |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    added = {}
    for guest in ("echo", "kv"):
        base = [s for run in rows[(f"{guest}-rtt", "none", "")] for s in run]
        for mode in MODES:
            samples = [s for run in rows[(f"{guest}-rtt", mode, "")] for s in run]
            p50, p99 = percentile(samples, 50), percentile(samples, 99)
            added[(guest, mode)] = (p50 - percentile(base, 50), p99 - percentile(base, 99))
            lines.append(f"| {guest} | {mode} | {len(samples):,} | {p50:.3f} | {p99:.3f} | {added[(guest, mode)][0]:+.3f} | "
                         f"{added[(guest, mode)][1]:+.3f} |")
    lines += [""]
    for guest in ("echo", "kv"):
        remus, llm = added[(guest, "remus")][0], added[(guest, "llm")][0]
        if remus > 0:
            lines.append(f"- {guest}: llm adds {(1 - llm / remus) * 100:.1f}% less p50 latency than remus "
                         "(goal ≥ 99%; LLM's paper: >90% less network delay).")
        else:
            lines.append(f"- {guest}: — remus added {remus:+.3f} ms at p50, nothing for llm to add less than.")
    lines += ["", "### LLM's HighNet: a ping every 10 ms on `echo` (one connection; all samples of all rounds)", "",
              "| mode | samples | p50 ms | p99 ms | added p50 ms vs none | added p99 ms vs none |",
              "| --- | --- | --- | --- | --- | --- |"]
    highnet = {mode: [s for run in rows[("echo-highnet", mode, "")] for s in run] for mode in MODES}
    for mode in MODES:
        lines.append(f"| {mode} | {len(highnet[mode]):,} | {percentile(highnet[mode], 50):.3f} | "
                     f"{percentile(highnet[mode], 99):.3f} | "
                     f"{percentile(highnet[mode], 50) - percentile(highnet['none'], 50):+.3f} | "
                     f"{percentile(highnet[mode], 99) - percentile(highnet['none'], 99):+.3f} |")
    http_seconds = sorted({r["seconds"] for mode in MODES for r in rows[("http", mode, "")]})
    lines += ["", f"### HTTP guest under `wrk -t2 -c32 --latency` (GET /counter; wrk ran "
              f"{http_seconds[0]:.2f}–{http_seconds[-1]:.2f} s per run)", "",
              "| mode | requests/s | of none | p50 ms | p99 ms | socket errors |", "| --- | --- | --- | --- | --- | --- |"]
    base = statistics.median([r["rps"] for r in rows[("http", "none", "")]])
    for mode in MODES:
        runs = rows[("http", mode, "")]
        rps = [r["rps"] for r in runs]
        errors = sum(sum(r["socket_errors"].values()) for r in runs)
        lines.append(f"| {mode} | {spread(rps)} | {ratio(statistics.median(rps), base, f'http {mode} of none'):.3f} | "
                     f"{statistics.median([r['p50'] for r in runs]):.2f} | {statistics.median([r['p99'] for r in runs]):.2f} | "
                     f"{errors:,} |")
    lines += ["", "### LLM's HighSys: `dirty` writing 200 pages/s of a 64 MiB working set", "",
              "Pause over a 2 s window of each run; — where the process did not suspend in it (`none` takes no "
              "checkpoints).", "",
              "| mode | mean suspension pause (ms) | STATUS round trips | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- |"]
    for mode in MODES:
        status = [s for run in rows[("highsys-status", mode, "")] for s in run]
        lines.append(f"| {mode} | {pauses(rows[('highsys-pause-ms', mode, '')])} | {len(status):,} | "
                     f"{percentile(status, 50):.3f} | {percentile(status, 99):.3f} |")
    lines += ["", "### Replication traffic and checkpoint pause (kv under redis-benchmark)", "",
              "Bytes both processes sent each other (the primary's `understudy_replicated_bytes`, its log and state, "
              "plus the backup's, its answers to sync points; acknowledgements are counted by neither) over the "
              "SET/GET/INCR runs, per second of them.", "",
              "| mode | bytes replicated per second | mean suspension pause (ms) |", "| --- | --- | --- |"]
    for mode in PROTECTED:
        lines.append(f"| {mode} | {spread([v / 1e6 for v in rows[('kv-bytes-per-s', mode, '')]], ' MB/s')} | "
                     f"{pauses(rows[('pause-ms', mode, '')])} |")
    lines += ["", "### Failover downtime", "",
              f"SIGKILL of the primary under `redis-benchmark -c 8 INCR {FAILOVER_LOAD_KEY}` at a random moment "
              f"(0.2–0.8 s in, then two GETs of {FAILOVER_LOAD_KEY} {FAILOVER_LOAD_WINDOW_SECONDS * 1000:.0f} ms apart "
              "must show it rising, or the run is an error) to the first `PING` the backup answers on the service "
              "address, including detection (the kernel closes the dead primary's replication connection at once on "
              "one host; across hosts, detection is the heartbeat timeout, 100 ms by default). With this few kills "
              "the top figure is the maximum, not a p99.", "",
              f"| mode | kills | p50 ms | max ms | fewest INCRs seen in the {FAILOVER_LOAD_WINDOW_SECONDS * 1000:.0f} ms "
              "before a kill |", "| --- | --- | --- | --- | --- |"]
    for mode in PROTECTED:
        values = rows[("downtime", mode, "")]
        lines.append(f"| {mode} | {len(values)} | {percentile(values, 50):.1f} | {max(values):.1f} | "
                     f"{min(rows[('failover-load-incrs', mode, '')]):,} |")
    lines += ["", "Goals: llm's added latency ≥ 99% below remus's; llm keeps ≥ 95% of unprotected throughput; "
              "failover ≤ 100 ms p99 including detection (issue 4); active fails over ≤ 20 ms after detection (issue 5).", ""]
    return lines
