"""The load `make bench` drives its servers with, and what it needs to reach them: redis-benchmark
run long enough to measure (its requests/s is requests over whole milliseconds, so a 12 ms run is
quantized by 8%), and wrk, both read by name through bench_parse."""
import math
import os
import socket
import subprocess
import time

from bench_parse import MissingFigure, redis_benchmark_csv, wrk_output

REDIS_BENCHMARK_CALIBRATION_REQUESTS = 2000
REDIS_BENCHMARK_REQUESTS_MAX = 20_000_000
REDIS_BENCHMARK_ATTEMPTS_MAX = 4
REDIS_BENCHMARK_TIMEOUT_SECONDS = 180


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port):
    """Whether something accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(predicate, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


def cpus_usable():
    """The CPUs this process (and so the servers and clients it starts) may run on: nproc."""
    return len(os.sched_getaffinity(0))


def redis_benchmark_once(port, test, requests, clients, pipeline):
    command = ["redis-benchmark", "-p", str(port), "-t", test, "-n", str(requests), "-c", str(clients),
               "-P", str(pipeline), "--csv"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=REDIS_BENCHMARK_TIMEOUT_SECONDS).stdout
    results = redis_benchmark_csv(out)
    if len(results) != 1:
        raise MissingFigure(f"`{' '.join(command)}` reported {sorted(results)}, not one test")
    return results


def redis_benchmark(port, tests, min_seconds, clients=50, pipeline=1):
    """{TEST: redis-benchmark's figures plus "requests" and "seconds"} for each of the
    comma-separated `tests`, each run on its own for at least `min_seconds`: a first run of
    REDIS_BENCHMARK_CALIBRATION_REQUESTS gives the rate, the next asks for enough requests to last
    1.25 × min_seconds at it, and a run that still ends early is made longer again (bounded in
    attempts and requests). The duration is redis-benchmark's own: requests ÷ requests/s."""
    results = {}
    for test in tests.split(","):
        requests, attempts = REDIS_BENCHMARK_CALIBRATION_REQUESTS, 0
        while True:
            ((name, result),) = redis_benchmark_once(port, test, requests, clients, pipeline).items()
            attempts += 1
            seconds = requests / result["rps"] if result["rps"] > 0 else 0.0
            if seconds >= min_seconds:
                break
            if attempts == REDIS_BENCHMARK_ATTEMPTS_MAX or requests == REDIS_BENCHMARK_REQUESTS_MAX:
                raise MissingFigure(f"redis-benchmark -t {test} never ran for {min_seconds} s: the last run, "
                                    f"{requests} requests, took {seconds:.3f} s")
            scale = 1.25 * min_seconds / seconds if seconds > 0 else 100
            requests = min(REDIS_BENCHMARK_REQUESTS_MAX, math.ceil(requests * scale))
        results[name] = dict(result, requests=requests, seconds=seconds)
    return results


def wrk(port, seconds, threads=2, connections=32):
    """GET /counter for `seconds`: requests/s and latency percentiles in ms. A response other than
    2xx/3xx is an error: the figure would count it as served."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/counter"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    result = wrk_output(out)
    if result["non_2xx"]:
        raise MissingFigure(f"`{' '.join(command)}`: {result['non_2xx']} responses were not 2xx or 3xx:\n{out}")
    if result["requests"] == 0:
        raise MissingFigure(f"`{' '.join(command)}` completed no request:\n{out}")
    return result


def run_lengths(results):
    """How long redis-benchmark results ran, for a report: "1.31–2.10 s per run (…requests)"."""
    seconds, requests = [r["seconds"] for r in results], [r["requests"] for r in results]
    return (f"{min(seconds):.2f}–{max(seconds):.2f} s per run, "
            f"{min(requests):,}–{max(requests):,} requests")
