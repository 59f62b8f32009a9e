"""The protection part of `make bench` (issues 4 and 5): the same guest and load under `none`
(`understudy run`), `remus` (25 ms epochs), `llm` and `active`, side by side in one run: throughput and
reply latency under redis-benchmark, single-client round-trip latency on `echo` and `kv`, bytes
replicated per second, the checkpoint pause, and failover downtime (SIGKILL of the primary to
the first answer from the backup, over many kills).
"""
import os
import random
import socket
import statistics
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "guests", "build")
MODES = ("none", "remus", "llm", "active")
PROTECTED = MODES[1:]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


class Protected:
    """`understudy run` (mode none), or a backup and a primary in `mode`, serving `guest`."""

    def __init__(self, bin_path, guest, mode, guest_arguments=(), options=(), backup_options=()):
        self.port, self.metrics_port = free_port(), free_port()
        self.replication = free_port()
        self.logs = []
        self.backup = None
        module = os.path.join(GUESTS, guest + ".wasm")
        listen = ["--listen", f"127.0.0.1:{self.port}", "--metrics", f"127.0.0.1:{self.metrics_port}"]
        if mode == "none":
            self.primary = self._start([bin_path, "run", module, *listen, *options, "--", *guest_arguments])
        else:
            self.backup = self._start([bin_path, "backup", "--replication", f"127.0.0.1:{self.replication}",
                                       "--listen", f"127.0.0.1:{self.port}", *backup_options])
            wait_for(lambda: "waiting for a primary" in self._log(1), 60, "the backup")
            self.primary = self._start([bin_path, "primary", module, *listen, "--backup",
                                        f"127.0.0.1:{self.replication}", "--mode", mode, *options,
                                        "--", *guest_arguments])
            wait_for(lambda: "the machine is protected" in self._log(2), 120, "protection")
        wait_for(lambda: self._answers(), 60, "the service")

    def _start(self, command):
        log = open(f"/tmp/understudy-bench-{len(self.logs)}-{os.getpid()}.log", "w+")
        self.logs.append(log)
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def _log(self, index):
        log = self.logs[index - 1]
        log.flush()
        with open(log.name) as handle:
            return handle.read()

    def _answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def metrics(self):
        """Every series of the primary's --metrics from one scrape, summed over label sets."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        totals = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return totals

    def metric(self, name):
        return self.metrics().get(name, 0.0)

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


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def measure(bin_path, quick, progress, redis_benchmark, wrk):
    rows = {}
    repeats = 2 if quick else 3
    requests = 5000 if quick else 20000
    trips = 300 if quick else 1000
    kills = 10 if quick else 20
    pings = 100 if quick else 300
    wrk_seconds = 2 if quick else 4

    def record(key, value):
        rows.setdefault(key, []).append(value)

    for round_number in range(1, repeats + 1):
        for mode in MODES:
            progress(f"protection round {round_number}/{repeats}: kv {mode} (redis-benchmark -c 50, {requests} requests per test)")
            server = Protected(bin_path, "kv", mode)
            try:
                sent_before = server.metric("understudy_replicated_bytes")
                started = time.perf_counter()
                for test, result in redis_benchmark(server.port, "set,get,incr", requests).items():
                    record(("kv", mode, test), result)
                elapsed = time.perf_counter() - started
                record(("kv-bytes-per-s", mode, ""), (server.metric("understudy_replicated_bytes") - sent_before) / elapsed)
                pauses = server.metric("understudy_suspension_pause_count")
                if pauses:
                    record(("pause-ms", mode, ""), server.metric("understudy_suspension_pause_sum") / pauses * 1000)
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
                after = server.metrics()
                count = after.get("understudy_suspension_pause_count", 0) - before.get("understudy_suspension_pause_count", 0)
                if count:
                    record(("highsys-pause-ms", mode, ""), (after["understudy_suspension_pause_sum"]
                                                              - before["understudy_suspension_pause_sum"]) / count * 1000)
                record(("highsys-status", mode, ""), round_trips(server.port, b"STATUS\n", b"\n", trips // 4))
            finally:
                server.stop()

    rng = random.Random(4)
    for mode in PROTECTED:
        for kill in range(1, kills + 1):
            progress(f"failover {mode}: kill {kill}/{kills}")
            server = Protected(bin_path, "kv", mode)
            load = subprocess.Popen(["redis-benchmark", "-p", str(server.port), "-t", "set,incr", "-n", "100000000",
                                     "-c", "8", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(rng.uniform(0.2, 0.8))
                killed = time.perf_counter()
                server.primary.kill()
                while True:
                    try:
                        if redis_ping(server.port, timeout=1):
                            break
                    except OSError:
                        time.sleep(0.0005)
                    if time.perf_counter() - killed > 30:
                        raise RuntimeError(f"no takeover after 30 s:\n{server._log(1)}")
                record(("downtime", mode, ""), (time.perf_counter() - killed) * 1000)
            finally:
                load.kill()
                load.wait()
                server.stop()
    return rows


def report(rows, quick, requests_label):
    def spread(values, unit=""):
        return f"{statistics.median(values):,.2f}{unit} ({min(values):,.2f} – {max(values):,.2f})"

    lines = [
        "",
        "## Protection: none, remus, llm and active side by side",
        "",
        "Each mode serves the same guest under the same load, one after the other in each round. `none` is "
        "`understudy run`; the others are `understudy primary --mode M` with `understudy backup` in another "
        "process on loopback (same 2 cores). remus uses 25 ms epochs; llm streams the event log and checkpoints "
        "every 50 ms; active streams the log to a backup that runs it too, and syncs every 100 ms (the defaults).",
        "",
        f"### kv under `redis-benchmark -c 50 -t set,get,incr` ({requests_label})",
        "",
        "| mode | test | requests/s | of none | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for test in ("SET", "GET", "INCR"):
        for mode in MODES:
            key = ("kv", mode, test)
            if key not in rows:
                continue
            rps = [r["rps"] for r in rows[key]]
            base_rps = statistics.median([r["rps"] for r in rows[("kv", "none", test)]])
            lines.append(f"| {mode} | {test} | {spread(rps)} | {statistics.median(rps) / base_rps:.3f} | "
                         f"{statistics.median([r['p50'] for r in rows[key]]):.2f} | "
                         f"{statistics.median([r['p99'] for r in rows[key]]):.2f} |")
    lines += ["", "### Single-client round trip (one connection, one request at a time; all samples of all rounds)", "",
              "| guest | mode | p50 ms | p99 ms | added p50 ms vs none | added p99 ms vs none |",
              "| --- | --- | --- | --- | --- | --- |"]
    added = {}
    for guest in ("echo", "kv"):
        base = [s for run in rows.get((f"{guest}-rtt", "none", ""), []) for s in run]
        for mode in MODES:
            samples = [s for run in rows.get((f"{guest}-rtt", mode, ""), []) for s in run]
            if not samples or not base:
                continue
            p50, p99 = percentile(samples, 50), percentile(samples, 99)
            added[(guest, mode)] = (p50 - percentile(base, 50), p99 - percentile(base, 99))
            lines.append(f"| {guest} | {mode} | {p50:.3f} | {p99:.3f} | {added[(guest, mode)][0]:+.3f} | "
                         f"{added[(guest, mode)][1]:+.3f} |")
    lines += [""]
    for guest in ("echo", "kv"):
        if (guest, "remus") in added and (guest, "llm") in added and added[(guest, "remus")][0] > 0:
            cut = 1 - added[(guest, "llm")][0] / added[(guest, "remus")][0]
            lines.append(f"- {guest}: llm adds {cut * 100:.1f}% less p50 latency than remus (goal ≥ 99%; LLM's paper: >90% less network delay).")
    lines += ["", "### LLM's HighNet: a ping every 10 ms on `echo` (one connection; all samples of all rounds)", "",
              "| mode | p50 ms | p99 ms | added p50 ms vs none | added p99 ms vs none |", "| --- | --- | --- | --- | --- |"]
    highnet = {mode: [s for run in rows.get(("echo-highnet", mode, ""), []) for s in run] for mode in MODES}
    for mode in MODES:
        if highnet[mode] and highnet["none"]:
            lines.append(f"| {mode} | {percentile(highnet[mode], 50):.3f} | {percentile(highnet[mode], 99):.3f} | "
                         f"{percentile(highnet[mode], 50) - percentile(highnet['none'], 50):+.3f} | "
                         f"{percentile(highnet[mode], 99) - percentile(highnet['none'], 99):+.3f} |")
    lines += ["", "### HTTP guest under `wrk -t2 -c32 --latency` (GET /counter)", "",
              "| mode | requests/s | of none | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- |"]
    for mode in MODES:
        runs = rows.get(("http", mode, ""), [])
        if runs and rows.get(("http", "none", "")):
            base = statistics.median([r["rps"] for r in rows[("http", "none", "")]])
            rps = [r["rps"] for r in runs]
            lines.append(f"| {mode} | {spread(rps)} | {statistics.median(rps) / base:.3f} | "
                         f"{statistics.median([r['p50'] for r in runs]):.2f} | {statistics.median([r['p99'] for r in runs]):.2f} |")
    lines += ["", "### LLM's HighSys: `dirty` writing 200 pages/s of a 64 MiB working set", "",
              "| mode | mean suspension pause (ms) | STATUS round trip p50 ms | p99 ms |", "| --- | --- | --- | --- |"]
    for mode in MODES:
        status = [s for run in rows.get(("highsys-status", mode, ""), []) for s in run]
        pause = rows.get(("highsys-pause-ms", mode, ""))
        if status:
            lines.append(f"| {mode} | {spread(pause) if pause else '—'} | {percentile(status, 50):.3f} | {percentile(status, 99):.3f} |")
    lines += ["", "### Replication traffic and checkpoint pause (kv under redis-benchmark)", "",
              "| mode | bytes replicated per second | mean suspension pause (ms) |", "| --- | --- | --- |"]
    for mode in PROTECTED:
        if ("kv-bytes-per-s", mode, "") in rows:
            pause = rows.get(("pause-ms", mode, ""))
            lines.append(f"| {mode} | {spread([v / 1e6 for v in rows[('kv-bytes-per-s', mode, '')]], ' MB/s')} | "
                         f"{spread(pause) if pause else '—'} |")
    lines += ["", "### Failover downtime", "",
              "SIGKILL of the primary under `redis-benchmark -c 8 -t set,incr` at a random moment (0.2–0.8 s in) to the "
              "first `PING` the backup answers on the service address, including detection (the kernel closes the "
              "dead primary's replication connection at once on one host; across hosts, detection is the heartbeat "
              "timeout, 100 ms by default).", "",
              "| mode | kills | p50 ms | p99 ms | max ms |", "| --- | --- | --- | --- | --- |"]
    for mode in PROTECTED:
        values = rows.get(("downtime", mode, ""), [])
        if values:
            lines.append(f"| {mode} | {len(values)} | {percentile(values, 50):.1f} | {percentile(values, 99):.1f} | {max(values):.1f} |")
    lines += ["", "Goals: llm's added latency ≥ 99% below remus's; llm keeps ≥ 95% of unprotected throughput; "
              "failover ≤ 100 ms p99 including detection (issue 4); active fails over ≤ 20 ms after detection (issue 5).", ""]
    return lines
