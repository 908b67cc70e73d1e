"""Small charts as inline SVG, drawn on the server (no CDN, no script): which chart a table of results fits, and
the chart itself. The console draws the same charts in the browser (approvals/static/console/console.js)."""

import re
from decimal import Decimal, InvalidOperation

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

TIME = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?([ T].*)?$")  # 2013, 2013-01, 2013-01-05, 2013-01-05 00:00:00
MAX_BARS = 30


def chart_of(columns: list[str], rows: list[list]) -> dict | None:
    """The chart a result fits: a line over time when its first column is a time and another is a number, bars
    when one column names categories (at most MAX_BARS) and another is a number; else None.
    {"type": "line" | "bar", "x": column index, "y": column index}."""
    if len(rows) < 2 or len(columns) < 2:
        return None
    numeric = [i for i in range(len(columns)) if all(_number(row[i]) is not None for row in rows)]
    labels = [i for i in range(len(columns)) if i not in numeric]
    first = [row[0] for row in rows]
    if all(isinstance(v, str) and TIME.match(v) for v in first) or all(
            type(v) is int and 1900 <= v <= 2100 for v in first):  # dates, or years
        y = next((i for i in numeric if i != 0), None)
        return {"type": "line", "x": 0, "y": y} if y is not None else None
    if labels and numeric and len(rows) <= MAX_BARS:
        return {"type": "bar", "x": labels[0], "y": numeric[0]}
    return None


def _number(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None


def svg(chart: dict, columns: list[str], rows: list[list], *, width: int = 520, height: int = 220) -> SafeString:
    """A result's chart (as `chart_of` chose it) as an <svg> element."""
    values = [_number(row[chart["y"]]) or 0.0 for row in rows]
    return plot([str(row[chart["x"]]) for row in rows], {columns[chart["y"]]: values}, kind=chart["type"],
                title=f"{columns[chart['y']]} by {columns[chart['x']]}", width=width, height=height)


COLORS = ["#4a7bb7", "#d9822b", "#c23030", "#29a634", "#8f398f", "#00998c"]


def plot(labels: list[str], series: dict[str, list[float | None]], *, kind: str = "line", title: str,
         width: int = 520, height: int = 220, rule: float | None = None) -> SafeString:
    """An <svg> chart of one or more series over `labels`: bars (of the first series) or a line per series, with a
    legend when there are several. A None value leaves a gap in its line; `rule` draws a dashed horizontal line at
    that value (an objective). Every text in it escaped."""
    values = [v for points in series.values() for v in points if v is not None]
    top = max([*values, rule or 0.0, 0.0]) or 1.0
    left, base, plot_w = 48, height - 30, width - 58
    step = plot_w / max(len(labels), 1)

    def y(value: float) -> float:
        return base - (base - 40) * max(value, 0) / top

    def x(i: int) -> float:
        return left + (i + 0.5) * step

    if kind == "bar":
        points = next(iter(series.values()))
        bar = '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}: {}</title></rect>'
        marks = format_html_join("", bar, ((_f(left + (i + 0.1) * step), _f(y(v or 0)), _f(step * 0.8),
                                            _f(base - y(v or 0)), COLORS[0], label, v)
                                           for i, (label, v) in enumerate(zip(labels, points))))
    else:
        marks = format_html_join("", "{}", ((_line(points, COLORS[n % len(COLORS)], x, y),)
                                            for n, points in enumerate(series.values())))
    legend = format_html_join("", '<rect x="{}" y="20" width="9" height="9" fill="{}"></rect>'
                                  '<text x="{}" y="28">{}</text>', (
        (left + 110 * n, COLORS[n % len(COLORS)], left + 110 * n + 12, name[:16])
        for n, name in enumerate(series))) if len(series) > 1 else ""
    if rule is not None:
        legend = format_html('{}<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#333" stroke-dasharray="4 3"></line>',
                             legend, left, _f(y(rule)), width - 10, _f(y(rule)))
    every = max(1, len(labels) // 8)  # at most about 8 labels under the axis
    ticks = format_html_join("", '<text x="{}" y="{}" text-anchor="middle">{}</text>', (
        (_f(x(i)), base + 16, label[:12]) for i, label in enumerate(labels) if i % every == 0))
    return format_html(
        '<svg class="chart {}" role="img" viewBox="0 0 {} {}" width="{}" height="{}" font-size="11" '
        'font-family="sans-serif"><title>{}</title><text x="4" y="12" font-weight="bold">{}</text>'
        '<text x="{}" y="44" text-anchor="end">{}</text>'
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999"></line>{}{}{}</svg>',
        kind, width, height, width, height, title, title, left - 4, _short(top), left, base, width - 10, base, marks,
        legend, ticks)


def _line(points: list[float | None], color: str, x, y) -> SafeString:
    """A polyline per run of consecutive values; a value alone is a dot."""
    runs, current = [], []
    for i, value in enumerate([*points, None]):
        if value is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((x(i), y(value)))
    return format_html_join("", "{}", ((
        format_html('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"></polyline>', color,
                    " ".join(f"{px:.1f},{py:.1f}" for px, py in run)) if len(run) > 1 else
        format_html('<circle cx="{}" cy="{}" r="2.5" fill="{}"></circle>', *map(_f, run[0]), color),) for run in runs))


def _f(value: float) -> str:
    return f"{value:.1f}"


def _short(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
