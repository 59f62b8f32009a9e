"""The speed goals of `make bench` (issue 15), per engine, side by side in one run: the CPU-bound
guest against its native build, kv and http against theirs, what protection costs in server CPU
per request (from schedstat, per process and thread) and in throughput, and the checkpoint pause.

Every run first waits for the machine to be quiet (other processes' CPU), and a run during which
other processes took CPU is dropped and repeated; the report says how many were.
Usage alone: scripts/bench_engines.py BIN [--quick]
"""
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_load import answers, cpus_usable, free_port, redis_benchmark, wait_for, wrk  # noqa: E402
from bench_parse import MissingFigure, ratio  # noqa: E402
from bench_protection import Protected  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "guests", "build")
ENGINES = ("wasmkit", "wasmtime")
QUIET_BUSY = 0.10  # of all CPUs, before a run starts
DISTURBED_BUSY = 0.08  # of all CPUs, taken by other processes during a run
ATTEMPTS = 4


def cpu_jiffies():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def wait_until_quiet(progress, seconds=15):
    """Waits for a 0.5 s window in which the machine was at most QUIET_BUSY busy; False if it never was."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        busy0, total0 = cpu_jiffies()
        time.sleep(0.5)
        busy1, total1 = cpu_jiffies()
        if total1 > total0 and (busy1 - busy0) / (total1 - total0) <= QUIET_BUSY:
            return True
    progress(f"the machine was never quiet for 0.5 s in {seconds} s; measuring anyway")
    return False


def thread_nanos(pid):
    """{thread group: ns on CPU} of a process, threads grouped by name (NIO-ELT-0-#3 → NIO-ELT)."""
    groups = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return groups
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as handle:
                name = handle.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                nanos = int(handle.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
        if tid == str(pid):
            group = "machine"
        elif "qos" in name:  # Dispatch's workers (com.apple.root.*-qos*, cut to 15 characters)
            group = "dispatch"
        else:
            group = re.sub(r"[-#]*\d+(-#\d+)?$", "", name) or name
        groups[group] = groups.get(group, 0) + nanos
    return groups


class Measured:
    """One measurement of servers (pid by role) under a client: their CPU by thread, the client's,
    and whether other processes took CPU meanwhile."""

    def __init__(self, servers):
        self.servers = servers

    def __enter__(self):
        self.before = {role: thread_nanos(pid) for role, pid in self.servers.items()}
        self.children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.jiffies = cpu_jiffies()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        after = {role: thread_nanos(pid) for role, pid in self.servers.items()}
        self.cpu = {role: {group: (after[role].get(group, 0) - self.before[role].get(group, 0)) / 1e9
                           for group in after[role]} for role in after}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        client = (children.ru_utime - self.children.ru_utime) + (children.ru_stime - self.children.ru_stime)
        busy, total = cpu_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        machine_busy = (busy - self.jiffies[0]) / hz
        ours = client + sum(sum(groups.values()) for groups in self.cpu.values())
        self.others = max(0.0, machine_busy - ours)
        self.disturbed = self.others > DISTURBED_BUSY * cpus_usable() * self.seconds
        return False


def measured(progress, label, servers, run, dropped):
    """`run()` under Measured, repeated while other processes disturb it; (result, Measured)."""
    for attempt in range(1, ATTEMPTS + 1):
        wait_until_quiet(progress)
        with Measured(servers) as watch:
            result = run()
        if not watch.disturbed or attempt == ATTEMPTS:
            if watch.disturbed:
                progress(f"{label}: disturbed in all {ATTEMPTS} attempts; kept the last")
            return result, watch
        dropped[label] = dropped.get(label, 0) + 1
        progress(f"{label}: other processes took {watch.others:.2f} CPU-s in {watch.seconds:.1f} s; dropped, repeating")


def native_server(guest):
    port = free_port()
    process = subprocess.Popen([os.path.join(GUESTS, "native", guest)], env=dict(os.environ, PORT=str(port)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: answers(port), 60, f"native {guest}")
    return process, port


def pin(pid, cpu):
    subprocess.run(["taskset", "-a", "-cp", str(cpu), str(pid)], check=True, stdout=subprocess.DEVNULL)


def measure(bin_path, quick, progress):
    repeats = 2 if quick else 3
    min_seconds = 1.0 if quick else 2.0
    wrk_seconds = 2 if quick else 4
    cpu_scale = "3" if quick else "10"
    rows, dropped = {}, {}

    def record(key, value):
        rows.setdefault(key, []).append(value)

    for round_number in range(1, repeats + 1):
        step = f"engines round {round_number}/{repeats}"
        progress(f"{step}: cpu guest, scale {cpu_scale}: native and each engine")
        native = [os.path.join(GUESTS, "native", "cpu"), cpu_scale]
        for how, command in [("native", native)] + [
                (engine, [bin_path, "run", "--engine", engine, os.path.join(GUESTS, "cpu.wasm"), "--", cpu_scale])
                for engine in ENGINES]:
            def run():
                started = time.perf_counter()
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
                return time.perf_counter() - started, out
            (seconds, out), _ = measured(progress, f"cpu {how}", {}, run, dropped)
            record(("cpu", how), seconds)
            record(("cpu-out", how), out)

        for guest in ("kv", "http"):
            for how in ("native",) + ENGINES:
                progress(f"{step}: {guest} {how}")
                if how == "native":
                    process, port = native_server(guest)
                    server, pid = None, process.pid
                else:
                    server = Protected(bin_path, guest, "none", options=("--engine", how))
                    process, port, pid = None, server.port, server.primary.pid
                try:
                    if guest == "kv":
                        result, _ = measured(progress, f"kv {how} -P 16", {"server": pid},
                                             lambda: redis_benchmark(port, "get", min_seconds, pipeline=16)["GET"], dropped)
                        record(("kv-P16", how), result["rps"])
                    else:
                        result, _ = measured(progress, f"http {how}", {"server": pid},
                                             lambda: wrk(port, wrk_seconds), dropped)
                        record(("http", how), result["rps"])
                finally:
                    if server:
                        server.stop()
                    if process:
                        process.kill()
                        process.wait()

        for engine in ENGINES:
            for mode in ("none", "llm", "active"):
                for clients, pinned in ((50, False), (8, False), (50, True)):
                    if pinned and mode == "active":
                        continue
                    label = f"kv {mode} {engine} -c {clients}{' pinned' if pinned else ''}"
                    progress(f"{step}: {label}")
                    server = Protected(bin_path, "kv", mode, options=("--engine", engine),
                                       backup_options=("--engine", engine))
                    try:
                        servers = {"primary": server.primary.pid}
                        if server.backup:
                            servers["backup"] = server.backup.pid
                        if pinned:
                            pin(server.primary.pid, 0)
                            if server.backup:
                                pin(server.backup.pid, 1)
                        results, watch = measured(
                            progress, label, servers,
                            lambda: redis_benchmark(server.port, "set,get,incr", min_seconds, clients=clients), dropped)
                    finally:
                        server.stop()
                    requests = sum(r["requests"] for r in results.values())
                    rps = statistics.mean(r["rps"] for r in results.values())
                    micros = {role: {group: seconds * 1e6 / requests for group, seconds in groups.items()}
                              for role, groups in watch.cpu.items()}
                    record(("protection", engine, mode, clients, pinned), {"rps": rps, "micros": micros})

    sizes = "16,256" if quick else "16,64,256,1024"
    bench_bin = os.path.join(os.path.dirname(bin_path), "understudy-bench")
    for engine in ENGINES:
        progress(f"checkpoint pause at 1 000 dirty pages on {engine} (understudy-bench, {sizes} MiB)")
        out = subprocess.run([bench_bin, GUESTS, "--sizes", sizes, "--dirty", "1000", "--rounds", "10" if quick else "20"],
                             stdout=subprocess.PIPE, text=True, check=True,
                             env=dict(os.environ, UNDERSTUDY_ENGINE=engine)).stdout
        for line in out.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                if row.get("kind") == "checkpoint" and row.get("tracker") == "userfaultfd":
                    record(("pause", engine, row["memoryMiB"]), row)
    return {"rows": rows, "dropped": dropped, "repeats": repeats, "min_seconds": min_seconds,
            "wrk_seconds": wrk_seconds, "cpu_scale": cpu_scale, "sizes": sizes}


def median(values):
    return statistics.median(values)


def per_request(entry):
    """Server CPU µs per request, all processes and threads."""
    return sum(sum(groups.values()) for groups in entry["micros"].values())


def report(measurement, quick):
    rows, dropped = measurement["rows"], measurement["dropped"]
    for how in ENGINES:
        if set(rows[("cpu-out", how)]) != set(rows[("cpu-out", "native")]):
            raise MissingFigure(f"the cpu guest on {how} printed {rows[('cpu-out', how)]}, natively {rows[('cpu-out', 'native')]}")

    def of_native(family, engine):
        return ratio(median(rows[(family, engine)]), median(rows[(family, "native")]), f"{family} {engine} of native")

    def protection(engine, mode, clients=50, pinned=False):
        return rows[("protection", engine, mode, clients, pinned)]

    def cpu_ratio(engine, mode):
        return ratio(median(per_request(e) for e in protection(engine, mode)),
                     median(per_request(e) for e in protection(engine, "none")), f"{mode} CPU per request on {engine}")

    def throughput_ratio(engine, clients, pinned=False):
        return ratio(median(e["rps"] for e in protection(engine, "llm", clients, pinned)),
                     median(e["rps"] for e in protection(engine, "none", clients, pinned)), f"llm/none -c {clients} on {engine}")

    def pause(engine):
        values = [median(r["pauseMedianMicros"] for r in rows[("pause", engine, size)])
                  for size in sorted({key[2] for key in rows if key[0] == "pause" and key[1] == engine})]
        return f"{min(values) / 1000:.2f}–{max(values) / 1000:.2f} ms"

    cpu = {engine: ratio(median(rows[("cpu", engine)]), median(rows[("cpu", "native")]), f"cpu {engine}") for engine in ENGINES}
    goals = [
        ("`cpu` guest, slowdown vs native", "≤ 2×", {e: f"{cpu[e]:.2f}×" for e in ENGINES}),
        ("kv `GET -P 16`, of native", "≥ 0.6", {e: f"{of_native('kv-P16', e):.2f}" for e in ENGINES}),
        ("http under wrk, of native", "≥ 0.6", {e: f"{of_native('http', e):.2f}" for e in ENGINES}),
        ("server CPU per request, `llm` (primary + backup) / `none`", "≤ 1.3×", {e: f"{cpu_ratio(e, 'llm'):.2f}×" for e in ENGINES}),
        ("same, `active` / `none`", "≤ 2.2×", {e: f"{cpu_ratio(e, 'active'):.2f}×" for e in ENGINES}),
        ("`llm` throughput / `none`, `-c 50`, primary and backup on separate cores (`taskset`)", "≥ 0.9",
         {e: f"{throughput_ratio(e, 50, True):.2f}" for e in ENGINES}),
        ("`llm` throughput / `none`, `-c 50`", "—", {e: f"{throughput_ratio(e, 50):.2f}" for e in ENGINES}),
        ("`llm` throughput / `none`, `-c 8`", "≥ 0.7", {e: f"{throughput_ratio(e, 8):.2f}" for e in ENGINES}),
        (f"checkpoint pause p50 at 1 000 dirty pages, {measurement['sizes'].replace(',', ', ')} MiB", "≤ 1 ms",
         {e: pause(e) for e in ENGINES}),
    ]
    total_dropped = sum(dropped.values())
    lines = [
        "",
        "## Speed goals, per engine (issue 15)",
        "",
        f"`scripts/bench_engines.py` (run by `make bench`): {measurement['repeats']} rounds, medians. WasmKit is the "
        "interpreter; wasmtime is Cranelift-compiled, with NaN canonicalization on and the module Asyncify-prepared "
        "as for WasmKit. The `cpu` guest runs at scale "
        f"{measurement['cpu_scale']} (wall time, start-up included); kv `GET -P 16` and the protection rows run "
        f"each redis-benchmark test for at least {measurement['min_seconds']} s; wrk runs {measurement['wrk_seconds']} s. "
        "CPU per request is every thread's time on CPU (`/proc/PID/task/*/schedstat`) over the requests served, "
        "`-t set,get,incr`, both processes of a pair.",
        "",
        f"Before each run the machine must be quiet (≤ {QUIET_BUSY:.0%} busy for 0.5 s); a run during which other "
        f"processes took more than {DISTURBED_BUSY:.0%} of the CPUs is dropped and repeated (up to {ATTEMPTS} times). "
        f"Dropped this run: {total_dropped}" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(dropped.items()))})."
                                                 if dropped else "."),
        "",
        "| figure | goal | WasmKit | wasmtime |",
        "| --- | --- | --- | --- |",
    ]
    for figure, goal, values in goals:
        lines.append(f"| {figure} | {goal} | {values['wasmkit']} | {values['wasmtime']} |")
    lines += [
        "",
        "Server CPU per request (µs, medians over the rounds) by process and thread: `machine` is the process's "
        "main thread (where the guest runs), `NIO-ELT` the replication event loop, others as the kernel names them.",
        "",
        "| engine | mode | clients | requests/s | µs per request | by thread |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for engine in ENGINES:
        for mode in ("none", "llm", "active"):
            for clients, pinned in ((50, False), (8, False), (50, True)):
                key = ("protection", engine, mode, clients, pinned)
                if key not in rows:
                    continue
                entries = rows[key]
                threads = {}
                for entry in entries:
                    for role, groups in entry["micros"].items():
                        for group, micros in groups.items():
                            threads.setdefault(f"{role} {group}", []).append(micros)
                shown = ", ".join(f"{name} {median(values):.1f}" for name, values in sorted(threads.items())
                                  if median(values) >= 0.1)
                lines.append(f"| {engine} | {mode} | {clients}{' (pinned)' if pinned else ''} | "
                             f"{median(e['rps'] for e in entries):,.0f} | {median(per_request(e) for e in entries):.1f} | {shown} |")
    lines += [
        "",
        "| `cpu` guest | seconds | slowdown vs native |",
        "| --- | --- | --- |",
    ]
    for how in ("native",) + ENGINES:
        values = rows[("cpu", how)]
        lines.append(f"| {how} | {median(values):.2f} ({min(values):.2f} – {max(values):.2f}) | "
                     f"{ratio(median(values), median(rows[('cpu', 'native')]), how):.2f}× |")
    return lines


if __name__ == "__main__":
    def progress(message):
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
    print("\n".join(report(measure(os.path.abspath(sys.argv[1]), "--quick" in sys.argv, progress), "--quick" in sys.argv)))
