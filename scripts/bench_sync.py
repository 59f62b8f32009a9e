"""The state-transfer part of `make bench` (issue 5): what each mode sends to keep its backup
current, side by side in one run, on kv (redis-benchmark), bank (transfers from 4 clients) and
dirty at several write rates: state bytes (checkpoints; active's sync points and repairs), log
bytes, per second and per checkpoint or sync, and the CPU both processes use. Then a block-size
sweep (remus and llm checkpoints travel as the blocks that changed), and a divergence that
active repairs, per block size.
"""
import os
import socket
import statistics
import subprocess
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


class BankLoad:
    """Four clients moving money between their own two accounts until stopped."""

    def __init__(self, port, clients=4):
        self.stopped = False
        self.threads = [threading.Thread(target=self._run, args=(port, 2 * c), daemon=True) for c in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, port, account):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                reader = s.makefile("rb")
                step = 0
                while not self.stopped:
                    step += 1
                    s.sendall(f"TRANSFER {account + step % 2} {account + 1 - step % 2} {step % 7 + 1}\n".encode())
                    if not reader.readline():
                        return
        except OSError:
            return

    def stop(self):
        self.stopped = True
        for thread in self.threads:
            thread.join(timeout=5)


WORKLOADS = [
    # (name, guest, guest arguments, load)
    ("kv", "kv", [], "redis"),
    ("bank", "bank", ["8", "1000"], "bank"),
    ("dirty 200 pages/s", "dirty", ["200", "64"], None),
    ("dirty 2 000 pages/s", "dirty", ["2000", "64"], None),
    ("dirty 20 000 pages/s", "dirty", ["20000", "64"], None),
]


def run_workload(bin_path, guest, arguments, load, mode, seconds, options=()):
    server = Protected(bin_path, guest, mode, guest_arguments=arguments, options=list(options))
    background = None
    try:
        if load == "redis":
            background = subprocess.Popen(["redis-benchmark", "-p", str(server.port), "-t", "set,incr", "-r", "100000",
                                           "-n", "100000000", "-c", "8", "-q"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif load == "bank":
            background = BankLoad(server.port)
        time.sleep(0.3)  # past the seed
        state0, total0 = server.metric("understudy_state_bytes"), server.metric("understudy_replicated_bytes")
        rounds0 = server.metric("understudy_syncs") + server.metric("understudy_checkpoints_sent")
        cpu0 = (cpu_seconds(server.primary.pid), cpu_seconds(server.backup.pid))
        started = time.perf_counter()
        time.sleep(seconds)
        elapsed = time.perf_counter() - started
        state = server.metric("understudy_state_bytes") - state0
        total = server.metric("understudy_replicated_bytes") - total0
        rounds = server.metric("understudy_syncs") + server.metric("understudy_checkpoints_sent") - rounds0
        cpu = (cpu_seconds(server.primary.pid) - cpu0[0], cpu_seconds(server.backup.pid) - cpu0[1])
        return {
            "state_per_s": state / elapsed, "log_per_s": (total - state) / elapsed,
            "per_round": state / rounds if rounds else 0.0, "rounds_per_s": rounds / elapsed,
            "cpu_primary": cpu[0] / elapsed, "cpu_backup": cpu[1] / elapsed,
            "repaired": server.metric("understudy_sync_repaired_blocks"),
        }
    finally:
        if background is not None:
            if isinstance(background, BankLoad):
                background.stop()
            else:
                background.kill()
                background.wait()
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
        for name, guest, arguments, load in (WORKLOADS[0], WORKLOADS[3]):
            for mode in ("remus", "llm"):
                progress(f"block-size sweep: {name}, {mode}, {size}-byte blocks ({seconds} s)")
                sweep.setdefault((name, mode, size), []).append(
                    run_workload(bin_path, guest, arguments, load, mode, seconds, ["--block-size", str(size)]))
        progress(f"block-size sweep: a divergence in active, {size}-byte blocks")
        sweep[("repair", "active", size)] = [repair_cost(bin_path, size)]
    return rows, sweep


def repair_cost(bin_path, size):
    """Bytes of the repair of one injected fault (4 corrupted spots of 16 bytes) on kv."""
    server = Protected(bin_path, "kv", "active", options=["--block-size", str(size), "--sync-every", "20ms"],
                       backup_options=["--inject-corruption-at-sync", "5"])
    try:
        bench_protection.wait_for(lambda: server.metric("understudy_sync_divergences") >= 1, 30, "the repair")
        before = server.metric("understudy_state_bytes")
        syncs = server.metric("understudy_syncs")
        time.sleep(0.5)
        # What the repair cost is what state traffic the sync with it carried beyond the others'.
        steady = (server.metric("understudy_state_bytes") - before) / max(1, server.metric("understudy_syncs") - syncs)
        return {"repair_bytes": before - steady * syncs, "blocks": server.metric("understudy_sync_repaired_blocks")}
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
              "| block size | kv remus | kv llm | dirty 2 000 pages/s remus | dirty 2 000 pages/s llm | active: one repair of 4 × 16 corrupted bytes |",
              "| --- | --- | --- | --- | --- | --- |"]
    for size in sorted({key[2] for key in sweep}):
        cells = []
        for name, mode in (("kv", "remus"), ("kv", "llm"), ("dirty 2 000 pages/s", "remus"), ("dirty 2 000 pages/s", "llm")):
            runs = sweep.get((name, mode, size))
            cells.append(f"{median([r['state_per_s'] for r in runs]) / 1e3:,.2f}" if runs else "—")
        repair = sweep.get(("repair", "active", size))
        cells.append(f"{repair[0]['blocks']:.0f} blocks, ~{max(0, repair[0]['repair_bytes']):,.0f} bytes" if repair else "—")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines
