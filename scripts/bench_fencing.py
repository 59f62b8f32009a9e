"""The fencing part of `make bench` (issue 13): what the generation on etcd and mutual TLS cost.
Failover downtime with etcd and TLS on (SIGKILL to the first good reply, the same loaded kills as
the protection section, which measures them plain, in the same run), and kv throughput and
latency of `llm` and `active` over mutual TLS beside plain TCP, alternated in one run.
"""
import os
import random
import shutil
import subprocess
import tempfile

import bench_protection
from bench_load import free_port, redis_benchmark, wait_for
from bench_parse import percentile, ratio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETCD = "/usr/bin/etcd"


class Etcd:
    """A single-member etcd of the benchmark's own on loopback, and throwaway certificates."""

    def __init__(self):
        if not os.access(ETCD, os.X_OK):
            raise RuntimeError(f"{ETCD} is missing: scripts/setup.sh installs etcd-server")
        self.directory = tempfile.mkdtemp(prefix="understudy-bench-etcd-")
        self.port, peer = free_port(), free_port()
        client, peer_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
        self.endpoint = client
        self.process = subprocess.Popen(
            [ETCD, "--data-dir", os.path.join(self.directory, "data"), "--listen-client-urls", client,
             "--advertise-client-urls", client, "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"default={peer_url}", "--logger", "zap", "--log-level", "error",
             "--log-outputs", os.path.join(self.directory, "etcd.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._healthy, 30, f"etcd on {client}")
        certificates = os.path.join(self.directory, "certificates")
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "certs.sh"), certificates], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.tls = ("--tls-cert", os.path.join(certificates, "node.pem"), "--tls-key", os.path.join(certificates, "node.key"),
                    "--tls-ca", os.path.join(certificates, "ca.pem"))

    def _healthy(self):
        import urllib.request
        try:
            return b'"health":"true"' in urllib.request.urlopen(f"{self.endpoint}/health", timeout=1).read()
        except OSError:
            return False

    def fence(self, name):
        return ("--etcd", self.endpoint, "--name", name)

    def stop(self):
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def measure(bin_path, quick, progress):
    rows = {}
    kills = 10 if quick else 20
    repeats = 2 if quick else 3
    min_seconds = 1.0 if quick else 2.0

    def record(key, value):
        rows.setdefault(key, []).append(value)

    etcd = Etcd()
    try:
        rng = random.Random(13)
        fenced = dict(channel=etcd.tls, coordination=etcd.fence)
        for mode in bench_protection.PROTECTED:
            for kill in range(1, kills + 1):
                progress(f"failover with etcd and TLS, {mode}: kill {kill}/{kills}")
                downtime, _ = bench_protection.failover(bin_path, mode, rng, f"fenced failover {mode}, kill {kill}", **fenced)
                record(("fenced-downtime", mode), downtime)
        for round_number in range(1, repeats + 1):
            for mode in ("llm", "active"):
                for channel in ("plain", "tls"):
                    progress(f"TLS cost round {round_number}/{repeats}: kv {mode} over {channel} (redis-benchmark -c 50)")
                    flags = etcd.tls if channel == "tls" else ("--insecure-replication",)
                    server = bench_protection.Protected(bin_path, "kv", mode, channel=flags)
                    try:
                        for test, result in redis_benchmark(server.port, "set,get,incr", min_seconds).items():
                            record(("tls-kv", mode, channel, test), result)
                    finally:
                        server.stop()
    finally:
        etcd.stop()
    return rows


def report(rows, plain, quick):
    """`plain`: the protection section's rows, for its unfenced downtimes of the same run."""
    lines = ["", "## Fencing: what etcd and TLS cost", "",
             "Failover downtime (SIGKILL of the primary to the first PONG from the backup) under the same "
             "checked INCR load as \"Failover downtime\" above, with the machine's generation on etcd (one "
             "transaction by the backup before it serves) and the replication channel over mutual TLS, beside the "
             "plain, unfenced kills of the same run. On one host the kernel announces the kill at once; the "
             "difference is the etcd transaction (and TLS's close).", "",
             "| mode | kills | p50 ms | p99 ms | plain p50 ms | plain p99 ms | p50 added by etcd + TLS |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for mode in bench_protection.PROTECTED:
        fenced = rows[("fenced-downtime", mode)]
        unfenced = plain[("downtime", mode, "")]
        lines.append(f"| {mode} | {len(fenced)} | {percentile(fenced, 50):.1f} | {percentile(fenced, 99):.1f} | "
                     f"{percentile(unfenced, 50):.1f} | {percentile(unfenced, 99):.1f} | "
                     f"{percentile(fenced, 50) - percentile(unfenced, 50):+.1f} |")
    lines += ["", "kv under redis-benchmark (-c 50), the replication channel over mutual TLS beside plain TCP, "
              "alternated in each round (medians over the rounds; requests per second and p50 latency in ms):", "",
              "| mode | test | plain rps | TLS rps | TLS / plain | plain p50 ms | TLS p50 ms |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for mode in ("llm", "active"):
        for test in ("SET", "GET", "INCR"):
            plain_runs = rows[("tls-kv", mode, "plain", test)]
            tls_runs = rows[("tls-kv", mode, "tls", test)]
            plain_rps = percentile([r["rps"] for r in plain_runs], 50)
            tls_rps = percentile([r["rps"] for r in tls_runs], 50)
            lines.append(f"| {mode} | {test} | {plain_rps:,.0f} | {tls_rps:,.0f} | {ratio(tls_rps, plain_rps, f'{mode} {test} TLS'):.3f} | "
                         f"{percentile([r['p50'] for r in plain_runs], 50):.3f} | {percentile([r['p50'] for r in tls_runs], 50):.3f} |")
    return lines
