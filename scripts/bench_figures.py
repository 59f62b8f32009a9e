"""The plots of `make bench` (issue 6), drawn from the same rows as the tables into
bench/results/*.svg, and the lines of BENCHMARKS.md that show them: a plot is linked only once it
is drawn, and one with no data in this run is said to have none (its old file removed)."""
import os
import statistics

import bench_plots
from bench_parse import percentile, ratio
from bench_protection import MODES, PROTECTED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")


def draw(checkpoint_rows, protection_rows, sync_rows, sweep_rows, workloads):
    os.makedirs(RESULTS, exist_ok=True)
    figures = []

    def figure(chart, name, caption, *arguments, note="", **options):
        if chart(os.path.join(RESULTS, name), *arguments, **options):
            figures.append(f"![{caption}](bench/results/{name})" + (f" {note}" if note else ""))
        else:
            figures.append(f"*{caption}* (`bench/results/{name}`): no data in this run, so no plot.")

    checkpoints = [r for r in checkpoint_rows if r["kind"] == "checkpoint"]
    dirty_counts = sorted({r["dirtyPages"] for r in checkpoints})
    figure(bench_plots.line_chart, "pause-vs-memory.svg", "checkpoint pause against memory size",
           "Checkpoint pause (p50) against memory size", "guest memory (MiB)", "pause (µs)",
           {f"{d:,} dirty pages": [(r["memoryMiB"], r["pauseMedianMicros"]) for r in checkpoints if r["dirtyPages"] == d]
            for d in dirty_counts}, log_x=True, log_y=True)
    figure(bench_plots.line_chart, "recording-bytes-vs-memory.svg", "bytes a recording writes against memory size",
           "Recording bytes (full + deltas) against memory size", "guest memory (MiB)", "MiB written",
           {f"{d:,} dirty pages / 25 ms": [(r["memoryMiB"], r["checkpointBytes"] / 2**20) for r in checkpoints
                                            if r["dirtyPages"] == d] for d in dirty_counts}, log_x=True, log_y=True)

    rates = [(name, int(arguments[0])) for name, guest, arguments, _ in workloads if guest == "dirty"]
    figure(bench_plots.line_chart, "state-bytes-vs-dirty-rate.svg", "state bytes per second against the dirty rate, per mode",
           "State traffic (both sides) against the guest's write rate (dirty, 64 MiB)", "pages written per second", "state KB/s",
           {mode: [(rate, statistics.median([r["state_per_s"] for r in sync_rows[(name, mode)]]) / 1e3)
                   for name, rate in rates if (name, mode) in sync_rows] for mode in PROTECTED},
           log_x=True, log_y=True)

    echo = {mode: [s for run in protection_rows.get(("echo-rtt", mode, ""), []) for s in run] for mode in MODES}
    added = {mode: percentile(echo[mode], 50) - percentile(echo["none"], 50) for mode in PROTECTED} if all(echo.values()) else {}
    not_drawn = [f"{mode} ({value:+.3f} ms)" for mode, value in added.items() if value <= 0]
    figure(bench_plots.bar_chart, "added-latency.svg", "added round-trip latency per mode",
           "echo round trip p50, added to none (ms)", "ms", [(mode, value) for mode, value in added.items() if value > 0],
           log_y=True, note=f"Not drawn on the log scale, added nothing or less than none: {', '.join(not_drawn)}." if not_drawn else "")
    kv_sets = {mode: protection_rows[("kv", mode, "SET")] for mode in MODES if ("kv", mode, "SET") in protection_rows}
    figure(bench_plots.bar_chart, "kv-throughput.svg", "kv SET throughput per mode, as a fraction of none",
           "kv SET throughput under redis-benchmark -c 50, of none", "fraction of none",
           [(mode, ratio(statistics.median([r["rps"] for r in kv_sets[mode]]),
                         statistics.median([r["rps"] for r in kv_sets["none"]]), f"kv SET {mode} of none"))
            for mode in MODES] if len(kv_sets) == len(MODES) else [])
    downtimes = [(mode, percentile(protection_rows[("downtime", mode, "")], 50)) for mode in PROTECTED
                 if ("downtime", mode, "") in protection_rows]
    figure(bench_plots.bar_chart, "failover.svg", "failover downtime p50 per mode",
           "Failover: SIGKILL to the backup's first answer (p50)", "ms", downtimes)
    sizes = sorted({key[2] for key in sweep_rows if key[0] != "repair"})
    figure(bench_plots.line_chart, "block-size.svg", "state bytes per second against the block size",
           "Checkpoint traffic against the block size", "block size (bytes)", "state KB/s",
           {f"{name}, {mode}": [(size, statistics.median([r["state_per_s"] for r in sweep_rows[(name, mode, size)]]) / 1e3)
                                for size in sizes if (name, mode, size) in sweep_rows]
            for name, mode in sorted({(k[0], k[1]) for k in sweep_rows if k[0] != "repair"})}, log_x=True)
    return ["", "## Plots", "", "Drawn by `make bench` from the runs above (`scripts/bench_figures.py`).", ""] + \
        [line for f in figures for line in (f, "")]


def claims(protection_rows, sync_rows, workloads):
    """The papers' headline claims beside ours, from this run."""
    lines = ["", "## Headline: the papers' claims beside ours (this run)", "",
             "| claim (paper) | theirs | ours | how ours is measured |", "| --- | --- | --- | --- |"]
    echo = {mode: [s for run in protection_rows[("echo-rtt", mode, "")] for s in run] for mode in MODES}
    added = {mode: percentile(echo[mode], 50) - percentile(echo["none"], 50) for mode in PROTECTED}
    for mode in ("llm", "active"):
        ours = (f"{mode}: {(1 - added[mode] / added['remus']) * 100:.1f}%" if added["remus"] > 0 else
                f"— (remus added {added['remus']:+.3f} ms, nothing to be below)")
        lines.append(f"| less added network delay than Remus (LLM) | >90% | {ours} | echo single-client round trip p50, added to `none` |")
    for mode in ("llm", "active"):
        fractions = [ratio(statistics.median([r["rps"] for r in protection_rows[("kv", mode, t)]]),
                           statistics.median([r["rps"] for r in protection_rows[("kv", "none", t)]]), f"kv {t} {mode} of none")
                     for t in ("SET", "GET", "INCR")]
        lines.append(f"| protection overhead (FGBI) | ≤13% | {mode}: {(1 - statistics.mean(fractions)) * 100:.0f}% "
                     f"| kv throughput lost under redis-benchmark -c 50, mean of SET/GET/INCR |")
    for name, *_ in workloads:
        traffic = ratio(statistics.median([r["state_per_s"] for r in sync_rows[(name, "remus")]]),
                        statistics.median([r["state_per_s"] for r in sync_rows[(name, "active")]]),
                        f"{name}: remus / active state bytes per second")
        lines.append(f"| less sync traffic than primary-backup (Lu & Chiueh; PLOVER) | >10×; 9.2× | {traffic:,.0f}× | "
                     f"{name}: state bytes per second (both sides), remus / active |")
    for mode in PROTECTED:
        values = protection_rows[("downtime", mode, "")]
        lines.append(f"| failover downtime (goal: active ≤ 20 ms after detection) | — | {mode}: p50 {percentile(values, 50):.1f} ms, "
                     f"max {max(values):.1f} ms over {len(values)} kills | SIGKILL under load to first answer, detection "
                     "included (one host: immediate) |")
    lines.append("")
    return lines
