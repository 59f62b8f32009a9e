"""The state-transfer part of `make bench` (issue 5): what each mode sends to keep its backup
current, side by side in one run, on kv (redis-benchmark), bank (transfers from 4 clients) and
dirty at several write rates: state bytes (checkpoints; active's sync points and repairs), log
bytes, per second and per checkpoint or sync, and the CPU both processes use. The load is open-loop
at a fixed rate, so that every mode does the same work. Then a block-size sweep (remus and llm
checkpoints travel as the blocks that changed), and a divergence that active repairs, per block
size.
"""
import os
import socket
import statistics
import threading
import time

import bench_protection
from bench_protection import Protected

MODES = ("remus", "llm", "active")


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (/proc/PID/stat, clock ticks)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RateLoad:
    """Requests at a fixed rate, pipelined over a few connections, whatever the replies do: every
    mode is given the same work (a closed-loop client under remus would send 40 requests a
    second per connection, one per epoch, and the comparison would be of different work)."""

    def __init__(self, port, rate, request, connections=4):
        self.stopped = False
        self.sent = 0
        self.threads = []
        for index in range(connections):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.threads += [threading.Thread(target=self._send, args=(s, index, rate / connections, request), daemon=True),
                             threading.Thread(target=self._drain, args=(s,), daemon=True)]
        for thread in self.threads:
            thread.start()

    def _send(self, s, index, rate, request):
        started, count = time.perf_counter(), 0
        try:
            while not self.stopped:
                due = int((time.perf_counter() - started) * rate)
                if due > count:
                    s.sendall(b"".join(request(index, n) for n in range(count, due)))
                    self.sent += due - count
                    count = due
                time.sleep(0.002)
        except OSError:
            return

    def _drain(self, s):
        try:
            while not self.stopped and s.recv(65536):
                pass
        except OSError:
            return

    def stop(self):
        self.stopped = True
        for thread in self.threads:
            thread.join(timeout=5)


def kv_request(connection, n):
    key, value = f"key:{(n * 7919 + connection) % 100000}", f"value-{n}"
    return f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n${len(value)}\r\n{value}\r\n".encode()


def bank_request(connection, n):
    a = 2 * connection
    return f"TRANSFER {a + n % 2} {a + 1 - n % 2} {n % 7 + 1}\n".encode()


WORKLOADS = [
    # (name, guest, guest arguments, (requests per second, request))
    ("kv, 4 000 SET/s", "kv", [], (4000, kv_request)),
    ("bank, 2 000 transfers/s", "bank", ["8", "1000"], (2000, bank_request)),
    ("dirty 200 pages/s", "dirty", ["200", "64"], None),
    ("dirty 2 000 pages/s", "dirty", ["2000", "64"], None),
    ("dirty 20 000 pages/s", "dirty", ["20000", "64"], None),
]


def run_workload(bin_path, guest, arguments, load, mode, seconds, options=()):
    server = Protected(bin_path, guest, mode, guest_arguments=arguments, options=list(options))
    background = RateLoad(server.port, *load) if load else None
    try:
        time.sleep(0.3)  # past the seed
        before = server.metrics()
        cpu0 = (cpu_seconds(server.primary.pid), cpu_seconds(server.backup.pid))
        started = time.perf_counter()
        time.sleep(seconds)
        elapsed = time.perf_counter() - started
        after = server.metrics()
        cpu = (cpu_seconds(server.primary.pid) - cpu0[0], cpu_seconds(server.backup.pid) - cpu0[1])

        def delta(name):
            return after.get(name, 0.0) - before.get(name, 0.0)
        state, total = delta("understudy_state_bytes"), delta("understudy_replicated_bytes")
        lost = server._log(2).count("backup lost")
        if lost:  # kept for a look: a lost backup means a new seed inside the measurement
            with open(f"/tmp/understudy-bench-lost-{guest}-{mode}-{int(time.time())}.log", "w") as keep:
                keep.write(server._log(1) + "\n----- primary -----\n" + server._log(2))
        rounds = delta("understudy_syncs") + delta("understudy_checkpoints_sent")
        return {
            "state_per_s": state / elapsed, "log_per_s": (total - state) / elapsed,
            "per_round": state / rounds if rounds else 0.0, "rounds_per_s": rounds / elapsed,
            "cpu_primary": cpu[0] / elapsed, "cpu_backup": cpu[1] / elapsed, "lost": lost,
        }
    finally:
        if background is not None:
            background.stop()
        server.stop()


def measure(bin_path, quick, progress):
    seconds = 2 if quick else 4
    repeats = 1 if quick else 3
    rows = {}
    for repeat in range(1, repeats + 1):
        for name, guest, arguments, load in WORKLOADS:
            for mode in MODES:
                progress(f"state transfer {repeat}/{repeats}: {name}, {mode} ({seconds} s)")
                rows.setdefault((name, mode), []).append(run_workload(bin_path, guest, arguments, load, mode, seconds))
    sweep = {}
    sizes = (64, 256, 4096) if quick else (64, 128, 256, 512, 1024, 4096)
    for size in sizes:
        for name, guest, arguments, load in (WORKLOADS[0], WORKLOADS[3]):  # kv, dirty 2 000 pages/s
            for mode in ("remus", "llm"):
                progress(f"block-size sweep: {name}, {mode}, {size}-byte blocks ({seconds} s)")
                sweep.setdefault((name, mode, size), []).append(
                    run_workload(bin_path, guest, arguments, load, mode, seconds, ["--block-size", str(size)]))
        progress(f"block-size sweep: a divergence in active, {size}-byte blocks")
        sweep[("repair", "active", size)] = [repair_cost(bin_path, size)]
    return rows, sweep


def repair_cost(bin_path, size):
    """What repairing one injected fault (4 corrupted spots of 16 bytes) on kv sends."""
    server = Protected(bin_path, "kv", "active", options=["--block-size", str(size), "--sync-every", "20ms"],
                       backup_options=["--inject-corruption-at-sync", "5"])
    try:
        bench_protection.wait_for(lambda: server.metric("understudy_sync_divergences") >= 1, 30, "the repair")
        metrics = server.metrics()
        return {"repair_bytes": metrics.get("understudy_sync_repair_bytes", 0.0),
                "blocks": metrics.get("understudy_sync_repaired_blocks", 0.0)}
    finally:
        server.stop()


def report(rows, sweep, quick):
    def median(values):
        return statistics.median(values)

    def spread(values, scale=1.0, digits=1):
        values = [v / scale for v in values]
        return f"{median(values):,.{digits}f} ({min(values):,.{digits}f} – {max(values):,.{digits}f})"

    lines = ["", "## State transfer: remus, llm and active side by side (issue 5)", "",
             "Each workload runs under each mode in turn, in every round; figures are median (min – max) over the "
             "rounds. *State* is what keeps the backup's memory and devices current: remus and llm checkpoints "
             "(after the seed, the blocks of written pages that changed, XORed with the backup's copy and "
             "compressed), active's sync points, answers and repairs. *Log* is the event log (llm, active). CPU is "
             "cores busy (CPU seconds per second) in each process; primary, backup and load share the same 2 cores. "
             "remus at 25 ms epochs, llm with 50 ms checkpoints, active with 100 ms syncs; 64-byte blocks.", "",
             "| workload | mode | state KB/s | per checkpoint or sync (bytes) | log KB/s | CPU primary | CPU backup |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, *_ in WORKLOADS:
        for mode in MODES:
            runs = rows.get((name, mode), [])
            if not runs:
                continue
            lines.append(
                f"| {name} | {mode} | {spread([r['state_per_s'] for r in runs], 1e3, 2)} | "
                f"{spread([r['per_round'] for r in runs], 1, 0)} | {spread([r['log_per_s'] for r in runs], 1e3)} | "
                f"{median([r['cpu_primary'] for r in runs]):.2f} | {median([r['cpu_backup'] for r in runs]):.2f} |")
    losses = [f"{name} in {mode}" for (name, mode), runs in rows.items() if any(r["lost"] for r in runs)]
    if losses:
        lines += ["", "The backup was lost and seeded again during a measurement (its seed counts in state bytes): "
                  + ", ".join(losses) + "."]
    lines += ["", "Ratio of state traffic, remus / active (goal ≥ 50×; Lu & Chiueh report >10×, PLOVER 9.2×):", ""]
    for name, *_ in WORKLOADS:
        remus, active = rows.get((name, "remus")), rows.get((name, "active"))
        if remus and active:
            r, a = median([x["state_per_s"] for x in remus]), median([x["state_per_s"] for x in active])
            per = median([x["per_round"] for x in remus]) / max(1e-9, median([x["per_round"] for x in active]))
            lines.append(f"- {name}: {r / max(a, 1e-9):,.0f}× less per second, {per:,.0f}× less per sync than per remus checkpoint.")
    lines += ["", "### Block-size sweep", "",
              "remus and llm checkpoints send the blocks of written pages that changed; 4096 is whole pages "
              "(XORed and compressed all the same). State KB/s, one run each:", "",
              f"| block size | {WORKLOADS[0][0]}, remus | same, llm | {WORKLOADS[3][0]}, remus | same, llm | active: the repair of 4 × 16 corrupted bytes (packed) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for size in sorted({key[2] for key in sweep}):
        cells = []
        for name, mode in ((WORKLOADS[0][0], "remus"), (WORKLOADS[0][0], "llm"), (WORKLOADS[3][0], "remus"),
                           (WORKLOADS[3][0], "llm")):
            runs = sweep.get((name, mode, size))
            cells.append(f"{median([r['state_per_s'] for r in runs]) / 1e3:,.2f}" if runs else "—")
        repair = sweep.get(("repair", "active", size))
        cells.append(f"{repair[0]['blocks']:.0f} blocks, {repair[0]['repair_bytes']:,.0f} bytes" if repair else "—")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines
