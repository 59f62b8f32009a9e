"""The two-hosts part of `make bench` (issue 14), on network namespaces (scripts/hosts.sh; root):
failover downtime across hosts (host death, detection by heartbeat silence included, to the first
good reply through the service IP, probed from the clients host) over a chain of kills per mode
and per --heartbeat-timeout; planned migration downtime per mode (`understudy migrate`, as the new
primary measures it: the old one's handover to its first possible answer); and the time from a
standby's start to "protected again" against the guest's memory size.
"""
import ctypes
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import bench_protection
from bench_parse import percentile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = os.path.join(ROOT, "scripts", "hosts.sh")
ADDRESS = {"a": "10.77.0.11", "b": "10.77.0.12", "etcd": "10.77.0.30"}
SERVICE_IP = "10.77.0.100"
PORT = 6379
REPLICATION = 7000
ETCD_URL = "http://10.77.0.30:2379"


def available():
    return os.geteuid() == 0 and shutil.which("ip") is not None and os.access("/usr/bin/etcd", os.X_OK)


def hosts(*arguments):
    subprocess.run(["bash", HOSTS, *arguments], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def enter_clients():
    """Moves the calling thread into the clients host's network namespace."""
    fd = os.open("/var/run/netns/us-clients", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns into us-clients")
    finally:
        os.close(fd)


def in_clients(function):
    """Runs `function` on a thread of its own inside the clients host; returns its result."""
    result = {}

    def body():
        enter_clients()
        result["value"] = function()
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return result["value"]


def ping_until_answered(deadline_seconds=30.0):
    """From the clients host: PING the service IP until PONG; returns when it answered."""
    deadline = time.perf_counter() + deadline_seconds
    while time.perf_counter() < deadline:
        try:
            with socket.create_connection((SERVICE_IP, PORT), timeout=0.05) as s:
                s.settimeout(0.5)
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return time.perf_counter()
        except OSError:
            pass
    raise RuntimeError("the service IP never answered")


class Load:
    """INCRs through the service IP from the clients host, reconnecting, until stopped."""

    def __init__(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        enter_clients()
        while self.running:
            try:
                with socket.create_connection((SERVICE_IP, PORT), timeout=0.2) as s:
                    s.settimeout(1.0)
                    while self.running:
                        s.sendall(b"*2\r\n$4\r\nINCR\r\n$4\r\nload\r\n")
                        if not s.recv(64):
                            break
            except OSError:
                time.sleep(0.005)

    def stop(self):
        self.running = False
        self.thread.join(timeout=5)


class Cluster:
    """etcd on its host, certificates, and understudy processes on hosts a and b."""

    def __init__(self, bin_path):
        self.bin = bin_path
        hosts("up")
        self.directory = tempfile.mkdtemp(prefix="understudy-bench-hosts-")
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "certs.sh"), os.path.join(self.directory, "certs")], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        etcd = ADDRESS["etcd"]
        self.etcd = subprocess.Popen(
            ["ip", "netns", "exec", "us-etcd", "/usr/bin/etcd", "--name", "bench", "--data-dir", os.path.join(self.directory, "etcd"),
             "--listen-client-urls", ETCD_URL, "--advertise-client-urls", ETCD_URL,
             "--listen-peer-urls", f"http://{etcd}:2380", "--initial-advertise-peer-urls", f"http://{etcd}:2380",
             "--initial-cluster", f"bench=http://{etcd}:2380", "--logger", "zap", "--log-level", "error",
             "--log-outputs", os.path.join(self.directory, "etcd.log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while subprocess.run(["curl", "-s", f"{ETCD_URL}/health"], stdout=subprocess.PIPE).stdout.find(b"true") < 0:
            if time.time() > deadline:
                raise RuntimeError("etcd on the etcd host never answered")
            time.sleep(0.1)
        certs = os.path.join(self.directory, "certs")
        self.processes = []
        self.logs = 0
        self.tls = ["--tls-cert", f"{certs}/node.pem", "--tls-key", f"{certs}/node.key", "--tls-ca", f"{certs}/ca.pem"]

    def common(self, name):
        return ["--name", name, "--etcd", ETCD_URL, *self.tls, "--service-ip", f"{SERVICE_IP}/24", "--service-interface", "eth0",
                "--listen", f"{SERVICE_IP}:{PORT}"]

    def start(self, host, arguments, wait_for):
        self.logs += 1
        log = os.path.join(self.directory, f"{host}-{self.logs}.log")
        with open(log, "w") as out:
            process = subprocess.Popen(["ip", "netns", "exec", f"us-{host}", self.bin, *arguments], stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        handle = Log(log, process)
        if wait_for:
            handle.wait_for(wait_for)
        return handle

    def standby(self, host, name, flags=()):
        return self.start(host, ["backup", "--replication", f"{ADDRESS[host]}:{REPLICATION}", *self.common(name), *flags],
                          "registered as a standby")

    def primary(self, host, name, mode, flags=(), wait_for="the machine is protected"):
        return self.start(host, ["primary", os.path.join(ROOT, "guests", "build", "kv.wasm"), "--mode", mode,
                                 "--replication", f"{ADDRESS[host]}:{REPLICATION}", *self.common(name), *flags], wait_for)

    def stop_processes(self):
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        self.processes = []
        hosts("heal", "a")
        hosts("heal", "b")

    def close(self):
        self.stop_processes()
        self.etcd.kill()
        self.etcd.wait()
        hosts("down")
        shutil.rmtree(self.directory, ignore_errors=True)


class Log:
    def __init__(self, path, process):
        self.path, self.process = path, process

    def text(self):
        with open(self.path, errors="replace") as handle:
            return handle.read()

    def count(self, text):
        return self.text().count(text)

    def wait_for(self, text, times=1, seconds=60):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.count(text) >= times:
                return
            if self.process.poll() is not None and self.count(text) < times:
                break
            time.sleep(0.01)
        raise RuntimeError(f"never said '{text}' ({times}x): {self.text()[-3000:]}")


def fill(megabytes):
    """From the clients host: SET megabytes values of 1 MiB of random bytes (incompressible)."""
    def body():
        with socket.create_connection((SERVICE_IP, PORT), timeout=30) as s:
            value = os.urandom(1 << 20)
            for index in range(megabytes):
                key = f"fill:{index}".encode()
                s.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, len(value)) + value + b"\r\n")
                reply = b""
                while not reply.endswith(b"\r\n"):
                    reply += s.recv(64)
                assert reply.startswith(b"+OK"), reply
    in_clients(body)


def measure(bin_path, quick, progress):
    if not available():
        return None
    rows = {}

    def record(key, value):
        rows.setdefault(key, []).append(value)

    kills = 6 if quick else 20
    migrations = 4 if quick else 10
    sizes = (16, 256) if quick else (16, 64, 256, 1024)
    cluster = Cluster(bin_path)
    try:
        for timeout, interval in (("100ms", "10ms"), ("30ms", "5ms")):
            beat = ("--heartbeat-timeout", timeout, "--heartbeat-interval", interval)
            for mode in bench_protection.PROTECTED:
                name = f"bench-{mode}-{timeout}"
                logs = {"b": cluster.standby("b", name, beat), "a": cluster.primary("a", name, mode, beat)}
                load = Load()
                serving, standing_by = "a", "b"
                try:
                    for kill in range(1, kills + 1):
                        progress(f"host death, {mode}, --heartbeat-timeout {timeout}: kill {kill}/{kills}")
                        time.sleep(0.3)
                        started = time.perf_counter()
                        hosts("kill", serving)
                        answered = in_clients(ping_until_answered)
                        record(("host-death", mode, timeout), (answered - started) * 1000)
                        survivor = logs[standing_by]
                        hosts("heal", serving)
                        logs[serving] = cluster.standby(serving, name, beat)
                        survivor.wait_for("the machine is protected")
                        serving, standing_by = standing_by, serving
                finally:
                    load.stop()
                    cluster.stop_processes()
        for mode in bench_protection.PROTECTED:
            name = f"bench-migrate-{mode}"
            cluster.standby("b", name)
            cluster.primary("a", name, mode)
            load = Load()
            try:
                for migration in range(1, migrations + 1):
                    progress(f"planned migration, {mode}: {migration}/{migrations}")
                    time.sleep(0.5)  # the old primary, a standby now, seeded again
                    out = subprocess.run([bin_path, "migrate", name, "--etcd", ETCD_URL], stderr=subprocess.PIPE, text=True, timeout=60)
                    found = re.search(r"downtime ([0-9.]+) ms", out.stderr)
                    if out.returncode != 0 or not found:
                        raise RuntimeError(f"migrate failed: {out.stderr}")
                    record(("migration", mode), float(found.group(1)))
            finally:
                load.stop()
                cluster.stop_processes()
        measure_seeding(cluster, sizes, record, progress)
    finally:
        cluster.close()
    return rows


def measure_seeding(cluster, sizes, record, progress):
    """Standby start to "protected" against the guest's memory, llm, at the default heartbeat."""
    for megabytes in sizes:
        progress(f"standby start to protected, llm, {megabytes} MiB of guest memory")
        name = f"bench-seed-{megabytes}"
        primary = cluster.primary("a", name, "llm", ("--memory-limit", "4GiB"), wait_for="no standby registered")
        fill(megabytes)
        started = time.perf_counter()
        cluster.standby("b", name)
        primary.wait_for("the machine is protected", seconds=300)
        record(("seed", megabytes), (time.perf_counter() - started) * 1000)
        cluster.stop_processes()


def report(rows, quick):
    lines = ["", "## Across hosts: host death, planned migration, re-protection", ""]
    if rows is None:
        return lines + ["Not measured: it needs root (network namespaces), iproute2 and etcd-server.", ""]
    lines += ["Hosts are network namespaces (scripts/hosts.sh); the primary and its standby on hosts a and b, etcd on its "
              "own host, the client on a fourth, through the service IP only, under a reconnecting INCR load. A host "
              "dies silently (cut, then SIGKILL): the backup learns it from heartbeat silence alone, wins the generation "
              "on etcd, takes the service IP (gratuitous ARP) and serves; then a standby is started on the dead host and "
              "seeded before the next kill (a chain, alternating a and b). Downtime: from the cut to the first PONG "
              "through the service IP, probed from the client's host with 50 ms connect attempts.", "",
              "| mode | --heartbeat-timeout | kills | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- |"]
    for timeout in ("100ms", "30ms"):
        for mode in bench_protection.PROTECTED:
            values = rows[("host-death", mode, timeout)]
            lines.append(f"| {mode} | {timeout} | {len(values)} | {percentile(values, 50):.1f} | {percentile(values, 99):.1f} |")
    lines += ["", "Planned migration (`understudy migrate`, back and forth between a and b under the same load): downtime as "
              "the new primary measures it, from the old primary's handover (its guest stopped) to the moment its own "
              "machine can answer. Anchor: Xen live migration, 60–210 ms of downtime (Clark et al., NSDI 2005).", "",
              "| mode | migrations | p50 ms | max ms |", "| --- | --- | --- | --- |"]
    for mode in bench_protection.PROTECTED:
        values = rows[("migration", mode)]
        lines.append(f"| {mode} | {len(values)} | {percentile(values, 50):.1f} | {max(values):.1f} |")
    lines += ["", "Re-protection: from a standby's start (on host b) to the primary's \"the machine is protected\", `llm`, "
              "against the guest's memory (kv filled with 1 MiB values of random bytes, so nothing compresses), at the "
              "default 100 ms `--heartbeat-timeout` (the pre-copy travels in 4 MiB parts):", "",
              "| guest memory filled | standby start to protected, ms |", "| --- | --- |"]
    for key in sorted(k for k in rows if k[0] == "seed"):
        lines.append(f"| {key[1]} MiB | {rows[key][0]:.0f} |")
    return lines


if __name__ == "__main__":
    # `python3 scripts/bench_hosts.py seeding [BIN]`: only the re-protection figures (root).
    import sys
    if sys.argv[1:2] != ["seeding"] or not available():
        sys.exit("usage: python3 scripts/bench_hosts.py seeding [path/to/understudy] (as root, with scripts/hosts.sh)")
    found = {}
    seeding = Cluster(sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, ".build", "release", "understudy"))
    try:
        measure_seeding(seeding, (16, 64, 256, 1024), lambda key, value: found.setdefault(key, []).append(value),
                        lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        seeding.close()
    for key in sorted(found):
        print(f"| {key[1]} MiB | {found[key][0]:.0f} |")
