"""What a user would pick instead (issue 6): Redis 7 (Debian's redis-server) with one replica,
plain and with `WAIT 1 0` after each write, driven like the kv guest, beside Understudy's kv in
each mode: the cost of protection as a ratio to the same server unprotected, for both."""
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import bench_protection
from bench_protection import Protected, free_port, percentile, round_trips, wait_for


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
        wait_for(lambda: _answers(port), 30, f"redis-server on {port}")
        return process

    def _info(self):
        return subprocess.run(["redis-cli", "-p", str(self.port), "INFO", "replication"], capture_output=True).stdout

    def stop(self):
        for process in self.processes:
            process.kill()
            process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def _answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


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
            await reader.readline()
        latencies.append((time.perf_counter() - started) * 1000)
        count += 1
    writer.close()
    return count


def closed_loop(port, payload, replies, seconds, clients=16):
    """Requests per second and latency percentiles of `clients` connections each sending
    `payload` and waiting for its `replies` lines, for `seconds`."""
    async def run():
        latencies = []
        deadline = time.perf_counter() + seconds
        counts = await asyncio.gather(*[_client(port, payload, replies, deadline, latencies) for _ in range(clients)])
        return sum(counts) / seconds, latencies
    rps, latencies = asyncio.run(run())
    return {"rps": rps, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}


def measure(bin_path, quick, progress, redis_benchmark):
    """rows[(system, variant)] = list of {set: redis-benchmark SET result, write: closed-loop
    SET(+WAIT) result, rtt: single-client round trip samples}."""
    rows = {}
    repeats = 2 if quick else 3
    requests = 5000 if quick else 20000
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
                    "set": redis_benchmark(pair.port, "set", requests)["SET"] if not waits else None,
                    "write": closed_loop(pair.port, payload, replies, seconds),
                    "rtt": round_trips(pair.port, payload, expect, trips)})
            finally:
                pair.stop()
        for mode in bench_protection.MODES:
            progress(f"redis round {round_number}/{repeats}: understudy kv {mode}, driven the same way")
            server = Protected(bin_path, "kv", mode)
            try:
                rows.setdefault(("understudy kv", mode), []).append({
                    "set": redis_benchmark(server.port, "set", requests)["SET"],
                    "write": closed_loop(server.port, SET, 1, seconds),
                    "rtt": round_trips(server.port, SET, b"+OK\r\n", trips)})
            finally:
                server.stop()
    return rows


def report(rows, quick):
    def median(values):
        return statistics.median(values)

    lines = ["", "## Against what a user would pick instead: Redis with a replica", "",
             "Debian's `redis-server` (no persistence), alone, with one replica (asynchronous: an acknowledged "
             "write can be lost with the primary), and with `WAIT 1 0` after each write (the reply waits until "
             "the replica has it: what Understudy's output commit gives). Understudy's kv guest in each mode, "
             "driven the same way. *Write* is 16 closed-loop connections each sending a SET (with its WAIT for "
             "Redis's synchronous variant) and waiting for the reply; *SET* is `redis-benchmark -c 50 -t set`; "
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
        lines.append(
            f"| {system} | {variant} | {f'{median(sets):,.0f}' if sets else '—'} | {write:,.0f} | "
            f"{median([r['write']['p50'] for r in runs]):.2f} / {median([r['write']['p99'] for r in runs]):.2f} | "
            f"{percentile(rtt, 50):.3f} / {percentile(rtt, 99):.3f} | {write / base_write:.2f} | "
            f"{percentile(rtt, 50) / percentile(base_rtt, 50):.2f} |")
    lines.append("")
    return lines
