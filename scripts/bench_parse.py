"""What the load tools and `--metrics` print, read by name: redis-benchmark's CSV by the column
names of its header row, wrk's labelled lines, Prometheus text by series name. A figure that is
missing or does not parse raises `MissingFigure` naming it, and so does a ratio over zero: a
renamed column or metric is an error, never a zero in a table or a huge "×" in a headline."""
import csv
import math
import re


class MissingFigure(RuntimeError):
    """A figure a report needs is not in what a tool printed, does not parse, or divides by zero."""


def number(text, what):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise MissingFigure(f"{what}: {text!r} is not a number") from None
    if math.isnan(value):
        raise MissingFigure(f"{what} is NaN")
    return value


def ratio(numerator, denominator, what):
    """numerator / denominator, or MissingFigure when the denominator is zero."""
    if denominator == 0:
        raise MissingFigure(f"{what}: the denominator is 0, so there is no ratio")
    return numerator / denominator


def percentile(values, p):
    """Nearest-rank percentile of a non-empty sample."""
    if not values:
        raise MissingFigure(f"p{p} of an empty sample")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# Our name for each figure -> the column redis-benchmark 7's --csv header gives it (milliseconds).
REDIS_BENCHMARK_COLUMNS = {"rps": "rps", "avg": "avg_latency_ms", "min": "min_latency_ms", "p50": "p50_latency_ms",
                           "p95": "p95_latency_ms", "p99": "p99_latency_ms", "max": "max_latency_ms"}


def redis_benchmark_csv(text):
    """{test: {"rps", "avg", "min", "p50", "p95", "p99", "max"}} from `redis-benchmark --csv`,
    each cell found by its column's name in the header row."""
    rows = [row for row in csv.reader(line for line in text.splitlines() if line.strip())]
    if not rows or rows[0][:1] != ["test"]:
        raise MissingFigure(f"redis-benchmark --csv printed no header row beginning with \"test\": {text[:300]!r}")
    header = rows[0]
    missing = [column for column in REDIS_BENCHMARK_COLUMNS.values() if column not in header]
    if missing:
        raise MissingFigure(f"redis-benchmark --csv has no column {', '.join(missing)} (its header: {', '.join(header)})")
    results = {}
    for row in rows[1:]:
        if row == header:
            continue
        if len(row) != len(header):
            raise MissingFigure(f"redis-benchmark --csv row {row} does not match its header {header}")
        cells = dict(zip(header, row))
        test = cells["test"]
        if test in results:
            raise MissingFigure(f"redis-benchmark --csv reports {test} twice")
        results[test] = {ours: number(cells[column], f"redis-benchmark {test} {column}")
                         for ours, column in REDIS_BENCHMARK_COLUMNS.items()}
    if not results:
        raise MissingFigure(f"redis-benchmark --csv printed a header and no results: {text[:300]!r}")
    return results


WRK_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk_time_ms(text, what):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise MissingFigure(f"{what}: {text!r} is not a wrk duration")
    return number(match.group(1), what) * WRK_TIME_UNITS[match.group(2)]


def wrk_output(text):
    """wrk --latency's report: {"rps", "requests", "seconds", "p50", "p75", "p90", "p99" (ms),
    "socket_errors": {kind: count}, "non_2xx"}, each from its labelled line."""
    def line(pattern, what):
        match = re.search(pattern, text, re.MULTILINE)
        if not match:
            raise MissingFigure(f"wrk printed no {what} line:\n{text}")
        return match

    result = {"rps": number(line(r"^Requests/sec:\s+(\S+)\s*$", "Requests/sec").group(1), "wrk Requests/sec")}
    totals = line(r"^\s*(\d+) requests in (\S+?),", "\"N requests in T\"")
    result["requests"] = int(totals.group(1))
    result["seconds"] = wrk_time_ms(totals.group(2), "wrk run time") / 1e3
    distribution = text.split("Latency Distribution", 1)
    if len(distribution) != 2:
        raise MissingFigure(f"wrk printed no Latency Distribution (was it run with --latency?):\n{text}")
    found = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", distribution[1], re.MULTILINE))
    for p in ("50", "75", "90", "99"):
        if p not in found:
            raise MissingFigure(f"wrk's Latency Distribution has no {p}% line:\n{text}")
        result[f"p{p}"] = wrk_time_ms(found[p], f"wrk latency {p}%")
    errors = re.search(r"^\s*Socket errors: (.*)$", text, re.MULTILINE)
    result["socket_errors"] = {kind: int(count) for kind, count in re.findall(r"(\w+) (\d+)", errors.group(1))} if errors else {}
    non_2xx = re.search(r"^\s*Non-2xx or 3xx responses: (\d+)", text, re.MULTILINE)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    return result


SERIES = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)(\s+-?\d+)?\s*$")


class Metrics:
    """One scrape of Prometheus text, each series summed over its label sets. Asking for a series
    the scrape does not have raises MissingFigure naming it and where it was scraped."""

    def __init__(self, text, source):
        self.source = source
        self.totals = {}
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            match = SERIES.match(line)
            if not match:
                raise MissingFigure(f"{source}: cannot read the metrics line {line!r}")
            name = match.group(1)
            self.totals[name] = self.totals.get(name, 0.0) + number(match.group(3), f"{source}: {name}")

    def __getitem__(self, name):
        if name not in self.totals:
            near = sorted(n for n in self.totals if n.split("_")[:2] == name.split("_")[:2])
            raise MissingFigure(f"{self.source} reports no metric {name}" + (f" (it has {', '.join(near)})" if near else ""))
        return self.totals[name]

    def since(self, earlier, name):
        """How much `name` grew from the `earlier` scrape of the same process to this one."""
        return self[name] - earlier[name]
