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
    """The chart as an <svg> element; every text in it escaped."""
    labels = [str(row[chart["x"]]) for row in rows]
    values = [_number(row[chart["y"]]) or 0.0 for row in rows]
    top = max(max(values), 0.0) or 1.0
    left, base, plot_w = 48, height - 30, width - 58
    step = plot_w / len(values)

    def y(value: float) -> str:
        return f"{base - (base - 10) * max(value, 0) / top:.1f}"

    def x(i: int) -> str:
        return f"{left + (i + 0.5) * step:.1f}"

    if chart["type"] == "bar":
        bar = '<rect x="{}" y="{}" width="{}" height="{}" fill="#4a7bb7"><title>{}: {}</title></rect>'
        marks = format_html_join("", bar, (
            (f"{left + (i + 0.1) * step:.1f}", y(v), f"{step * 0.8:.1f}", f"{base - float(y(v)):.1f}", label, v)
            for i, (label, v) in enumerate(zip(labels, values))))
    else:
        marks = format_html('<polyline fill="none" stroke="#4a7bb7" stroke-width="2" points="{}"></polyline>',
                            " ".join(f"{x(i)},{y(v)}" for i, v in enumerate(values)))
    every = max(1, len(labels) // 8)  # at most about 8 labels under the axis
    ticks = format_html_join("", '<text x="{}" y="{}" text-anchor="middle">{}</text>', (
        (x(i), base + 16, label[:12]) for i, label in enumerate(labels) if i % every == 0))
    return format_html(
        '<svg class="chart {}" role="img" viewBox="0 0 {} {}" width="{}" height="{}" font-size="11" '
        'font-family="sans-serif"><title>{} by {}</title><text x="{}" y="16" text-anchor="end">{}</text>'
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999"></line>{}{}</svg>',
        chart["type"], width, height, width, height, columns[chart["y"]], columns[chart["x"]], left - 4, _short(top),
        left, base, width - 10, base, marks, ticks)


def _short(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
