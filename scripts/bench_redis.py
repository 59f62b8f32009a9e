"""What a user would pick instead (issue 6): Redis 7 (Debian's redis-server) with one replica,
plain and with `WAIT 1 0` after each write, driven like the kv guest, beside Understudy's kv in
each mode: the cost of protection as a ratio to the same server unprotected, for both."""
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time

import bench_protection
from bench_load import answers, free_port, redis_benchmark, run_lengths, wait_for
from bench_parse import percentile, ratio
from bench_protection import Protected, round_trips


class RedisPair:
    """redis-server, and with `replica` a second one replicating it (both without persistence)."""

    def __init__(self, replica):
        self.directory = tempfile.mkdtemp(prefix="understudy-redis-")
        self.port = free_port()
        self.processes = [self._start(self.port)]
        if replica:
            replica_port = free_port()
            self.processes.append(self._start(replica_port, "--replicaof", "127.0.0.1", str(self.port)))
            wait_for(lambda: b"state=online" in self._info(), 30, "the replica")
            # The first WAIT after the initial sync waits for the replica's periodic ack (up to
            # seconds): paid here, not in a measurement.
            subprocess.run(["redis-cli", "-p", str(self.port), "WAIT", "1", "10000"], capture_output=True, timeout=15)

    def _start(self, port, *extra):
        process = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                                    "--dir", self.directory, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: answers(port), 30, f"redis-server on {port}")
        return process

    def _info(self):
        return subprocess.run(["redis-cli", "-p", str(self.port), "INFO", "replication"], capture_output=True).stdout

    def stop(self):
        for process in self.processes:
            process.kill()
            process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def available():
    return shutil.which("redis-server") is not None


SET = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"
WAIT = b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$1\r\n0\r\n"


async def _client(port, payload, replies, deadline, latencies):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    count = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        writer.write(payload)
        for _ in range(replies):
            reply = await reader.readline()
            if not reply or reply.startswith(b"-"):  # a close or an error is not a request served
                raise RuntimeError(f"127.0.0.1:{port} answered {reply!r} to {payload!r}")
        latencies.append((time.perf_counter() - started) * 1000)
        count += 1
    writer.close()
    return count


def closed_loop(port, payload, replies, seconds, clients=16):
    """Requests per second and latency percentiles of `clients` connections each sending
    `payload` and waiting for its `replies` lines, for `seconds` (requests/s over the time until
    the last reply, which comes after the deadline)."""
    async def run():
        latencies = []
        started = time.perf_counter()
        counts = await asyncio.gather(*[_client(port, payload, replies, started + seconds, latencies) for _ in range(clients)])
        return sum(counts), time.perf_counter() - started, latencies
    count, elapsed, latencies = asyncio.run(run())
    return {"rps": ratio(count, elapsed, "closed-loop requests per second"), "seconds": elapsed,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}


def measure(bin_path, quick, progress):
    """rows[(system, variant)] = list of {set: redis-benchmark SET result, write: closed-loop
    SET(+WAIT) result, rtt: single-client round trip samples}."""
    rows = {}
    repeats = 2 if quick else 3
    min_seconds = 1.0 if quick else 2.0
    seconds = 2 if quick else 4
    trips = 300 if quick else 1000
    systems = [("redis", "alone", False), ("redis", "replica", False), ("redis", "replica + WAIT 1 0", True)]
    for round_number in range(1, repeats + 1):
        for system, variant, waits in systems:
            progress(f"redis round {round_number}/{repeats}: {variant}")
            pair = RedisPair(replica=variant != "alone")
            try:
                payload, replies = (SET + WAIT, 2) if waits else (SET, 1)
                expect = b":1\r\n" if waits else b"+OK\r\n"
                rows.setdefault((system, variant), []).append({
                    "set": redis_benchmark(pair.port, "set", min_seconds)["SET"] if not waits else None,
                    "write": closed_loop(pair.port, payload, replies, seconds),
                    "rtt": round_trips(pair.port, payload, expect, trips)})
            finally:
                pair.stop()
        for mode in bench_protection.MODES:
            progress(f"redis round {round_number}/{repeats}: understudy kv {mode}, driven the same way")
            server = Protected(bin_path, "kv", mode)
            try:
                rows.setdefault(("understudy kv", mode), []).append({
                    "set": redis_benchmark(server.port, "set", min_seconds)["SET"],
                    "write": closed_loop(server.port, SET, 1, seconds),
                    "rtt": round_trips(server.port, SET, b"+OK\r\n", trips)})
            finally:
                server.stop()
    return rows


def report(rows, quick):
    def median(values):
        return statistics.median(values)

    set_runs = [r["set"] for runs in rows.values() for r in runs if r["set"]]
    write_seconds = [r["write"]["seconds"] for runs in rows.values() for r in runs]
    lines = ["", "## Against what a user would pick instead: Redis with a replica", "",
             "Debian's `redis-server` (no persistence), alone, with one replica (asynchronous: an acknowledged "
             "write can be lost with the primary), and with `WAIT 1 0` after each write (the reply waits until "
             "the replica has it: what Understudy's output commit gives). Understudy's kv guest in each mode, "
             "driven the same way. *Write* is 16 closed-loop connections each sending a SET (with its WAIT for "
             "Redis's synchronous variant) and waiting for the reply, for "
             f"{min(write_seconds):.2f}–{max(write_seconds):.2f} s per run; *SET* is `redis-benchmark -c 50 -t set` "
             f"({run_lengths(set_runs)}); "
             "*round trip* is one connection, one write at a time. The protection cost is protected ÷ unprotected "
             "for the same server: Redis against Redis alone, Understudy against Understudy `none`.", "",
             "| server | variant | SET req/s (redis-benchmark) | write req/s | write p50 / p99 ms | round trip p50 / p99 ms | "
             "throughput kept | round trip × |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    bases = {"redis": ("redis", "alone"), "understudy kv": ("understudy kv", "none")}
    for (system, variant), runs in rows.items():
        base = rows[bases[system]]
        write = median([r["write"]["rps"] for r in runs])
        base_write = median([r["write"]["rps"] for r in base])
        rtt = [s for r in runs for s in r["rtt"]]
        base_rtt = [s for r in base for s in r["rtt"]]
        sets = [r["set"]["rps"] for r in runs if r["set"]]
        kept = ratio(write, base_write, f"{system} {variant}: write req/s of unprotected")
        slower = ratio(percentile(rtt, 50), percentile(base_rtt, 50), f"{system} {variant}: round trip of unprotected")
        lines.append(
            f"| {system} | {variant} | {f'{median(sets):,.0f}' if sets else '— (WAIT is not a redis-benchmark test)'} | "
            f"{write:,.0f} | "
            f"{median([r['write']['p50'] for r in runs]):.2f} / {median([r['write']['p99'] for r in runs]):.2f} | "
            f"{percentile(rtt, 50):.3f} / {percentile(rtt, 99):.3f} | {kept:.2f} | {slower:.2f} |")
    lines.append("")
    return lines
