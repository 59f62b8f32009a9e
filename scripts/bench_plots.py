"""Line and bar charts as SVG files, with no dependency beyond Python: `make bench` draws its
plots into bench/results/ on any machine it runs on. A chart with no data writes nothing and
removes any file an earlier run left at its path, so no stale plot survives; each returns whether
it drew."""
import html
import math
import os

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 40, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def _ticks(low, high, log):
    if log:
        first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
        return [10 ** e for e in range(first, last + 1)]
    step = 10 ** math.floor(math.log10(max(high - low, 1e-12)))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= 6:
            step *= factor
            break
    start = math.floor(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 2)]


def _label(value):
    if value >= 1000 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:g}"


def _no_data(path):
    if os.path.exists(path):
        os.unlink(path)
    return False


def _write(path, out):
    with open(path, "w") as handle:
        handle.write("\n".join(out) + "\n")
    return True


def line_chart(path, title, x_label, y_label, series, log_x=False, log_y=False):
    """series: {name: [(x, y), ...]}; writes an SVG to path if there is a point to draw."""
    points = [p for values in series.values() for p in values if p[1] is not None]
    if not points:
        return _no_data(path)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks = _ticks(min(xs), max(xs), log_x)
    y_ticks = _ticks(min(0, min(ys)) if not log_y else min(ys), max(ys), log_y)
    x_lo, x_hi = (min(xs), max(xs)) if log_x else (x_ticks[0], x_ticks[-1])
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def sx(x):
        f = (math.log10(x) - math.log10(x_lo)) / max(1e-12, math.log10(x_hi) - math.log10(x_lo)) if log_x \
            else (x - x_lo) / max(1e-12, x_hi - x_lo)
        return LEFT + f * (WIDTH - LEFT - RIGHT)

    def sy(y):
        f = (math.log10(y) - math.log10(y_lo)) / max(1e-12, math.log10(y_hi) - math.log10(y_lo)) if log_y \
            else (y - y_lo) / max(1e-12, y_hi - y_lo)
        return HEIGHT - BOTTOM - f * (HEIGHT - TOP - BOTTOM)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="14">{html.escape(title)}</text>']
    for t in x_ticks:
        if x_lo <= t <= x_hi:
            out.append(f'<line x1="{sx(t):.1f}" y1="{TOP}" x2="{sx(t):.1f}" y2="{HEIGHT - BOTTOM}" stroke="#eee"/>')
            out.append(f'<text x="{sx(t):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{_label(t)}</text>')
    for t in y_ticks:
        out.append(f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{WIDTH - RIGHT}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    out.append(f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="black"/>')
    out.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="black"/>')
    out.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 12}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append(f'<text transform="translate(16 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" text-anchor="middle">'
               f'{html.escape(y_label)}</text>')
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        values = sorted(p for p in values if p[1] is not None)
        if not values:
            continue
        path_d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(values))
        out.append(f'<path d="{path_d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in values]
        ly = TOP + 10 + index * 18
        out.append(f'<line x1="{WIDTH - RIGHT + 12}" y1="{ly}" x2="{WIDTH - RIGHT + 32}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{WIDTH - RIGHT + 38}" y="{ly + 4}">{html.escape(name)}</text>')
    out.append("</svg>")
    return _write(path, out)


def bar_chart(path, title, y_label, bars, log_y=False):
    """bars: [(label, value)]; writes an SVG to path if there is a bar to draw."""
    if not bars:
        return _no_data(path)
    top = max(v for _, v in bars)
    ticks = _ticks(min(v for _, v in bars) if log_y else 0, top, log_y)
    lo, hi = ticks[0], ticks[-1]

    def sy(y):
        f = (math.log10(max(y, lo)) - math.log10(lo)) / max(1e-12, math.log10(hi) - math.log10(lo)) if log_y \
            else (y - lo) / max(1e-12, hi - lo)
        return HEIGHT - BOTTOM - f * (HEIGHT - TOP - BOTTOM)

    width = (WIDTH - LEFT - 20) / len(bars)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="14">{html.escape(title)}</text>']
    for t in ticks:
        out.append(f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{WIDTH - 20}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    out.append(f'<text transform="translate(16 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" text-anchor="middle">'
               f'{html.escape(y_label)}</text>')
    for index, (label, value) in enumerate(bars):
        x = LEFT + index * width + width * 0.15
        out.append(f'<rect x="{x:.1f}" y="{sy(value):.1f}" width="{width * 0.7:.1f}" '
                   f'height="{HEIGHT - BOTTOM - sy(value):.1f}" fill="{COLOURS[index % len(COLOURS)]}"/>')
        out.append(f'<text x="{x + width * 0.35:.1f}" y="{sy(value) - 4:.1f}" text-anchor="middle">{_label(round(value, 2))}</text>')
        out.append(f'<text x="{x + width * 0.35:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{html.escape(label)}</text>')
    out.append(f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - 20}" y2="{HEIGHT - BOTTOM}" stroke="black"/>')
    out.append("</svg>")
    return _write(path, out)
