"""Inline SVG charts for the report: horizontal bars with CI whiskers, target lines and truth markers.

Drawn in Python as plain SVG elements with every text and attribute value escaped, so the report needs no
script, no chart library and nothing from the network. A chart is a list of rows (a class, or a group); each
row holds one bar per series (an arm) and optionally the target share (a dashed line) and the world's true
share (a black diamond). Hovering a bar shows its number and CI (an SVG <title>, no JS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

# Okabe-Ito: distinguishable with the common colour-vision deficiencies; black is kept for truth markers
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999933", "#882255")
TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Bar:
    series: str  # the arm label
    value: float  # NaN: no images in this cell
    low: float = math.nan
    high: float = math.nan
    n: int | None = None


@dataclass(frozen=True)
class BarRow:
    label: str  # class or group name
    bars: list[Bar] = field(default_factory=list)
    target: float | None = None
    truth: float | None = None


@dataclass(frozen=True)
class ChartLayout:
    plot_width: int = 150  # px for the 0..1 axis (five attribute charts fit a 1280 px wide window)
    bar_height: int = 8
    row_gap: int = 6
    title_height: int = 18
    axis_height: int = 20
    max_label_chars: int = 18  # longer row labels are cut (the full label is in a tooltip)


def element(tag: str, content: str | Markup = "", /, **attrs: object) -> Markup:
    """One SVG element; attribute names use `_` for `-` (a trailing `_` is dropped: `class_`), values escaped."""
    parts = [tag]
    for name, value in attrs.items():
        if value is None:
            continue
        name = name.rstrip("_").replace("_", "-")
        if isinstance(value, float):
            value = f"{value:.2f}".rstrip("0").rstrip(".")
        parts.append(f'{name}="{escape(str(value))}"')
    return Markup(f"<{' '.join(parts)}>{escape(content)}</{tag}>")


def number(x: float | None, digits: int = 2) -> str:
    """A number for tables and tooltips: NaN/None as an em dash, inf as the infinity sign."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}f}"


def with_ci(x: float | None, low: float | None, high: float | None, digits: int = 2) -> str:
    """`0.42 [0.35, 0.49]`; an estimate without a CI prints alone, a missing estimate as an em dash."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return number(x, digits)
    return f"{number(x, digits)} [{number(low, digits)}, {number(high, digits)}]"


def series_colors(series: Sequence[str]) -> dict[str, str]:
    """A colour per series in order (the palette repeats past eight series)."""
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(dict.fromkeys(series))}


def _cut(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def hbar_chart(
    rows: Sequence[BarRow],
    colors: dict[str, str],
    *,
    title: str,
    chart_id: str,
    kind: str,
    description: str | None = None,
    layout: ChartLayout = ChartLayout(),
) -> Markup:
    """Horizontal bars on a 0..1 axis, one band per row and one bar per series in it, with CI whiskers.

    `title` is drawn above the plot, `description` (default: the title) is the chart's accessible name. The
    <svg> carries `class="fd-chart fd-{kind}"` and `id=chart_id` so that tests and readers can find it."""
    description = description or title
    lay = layout
    label_width = 12 + round(6.8 * min(lay.max_label_chars, max((len(r.label) for r in rows), default=4)))
    n_series = max((len(r.bars) for r in rows), default=1) or 1
    band = n_series * lay.bar_height + lay.row_gap
    left, right = label_width, 14
    width = left + lay.plot_width + right
    height = lay.title_height + band * len(rows) + lay.axis_height

    def x(v: float) -> float:
        return left + lay.plot_width * min(max(v, 0.0), 1.0)

    parts = [element("title", description)]
    parts.append(element("text", title, x=4, y=13, class_="fd-chart-title"))
    top, bottom = lay.title_height, lay.title_height + band * len(rows)
    for t in TICKS:  # grid and axis labels
        parts.append(element("line", x1=x(t), x2=x(t), y1=top - 2, y2=bottom, class_="fd-grid"))
        parts.append(element("text", f"{t:g}", x=x(t), y=bottom + 13, class_="fd-tick"))
    for i, row in enumerate(rows):
        y0 = top + i * band
        label = element("text", _cut(row.label, lay.max_label_chars), x=left - 5, y=y0 + band / 2 + 1)
        parts.append(element("g", element("title", row.label) + label, class_="fd-row-label"))
        if all(math.isnan(bar.value) for bar in row.bars):
            tip = element("title", f"{row.label}: no images in any arm")
            parts.append(
                element("g", tip + element("text", "no images", x=left + 3, y=y0 + band / 2 + 3), class_="fd-empty")
            )
        for j, bar in enumerate(row.bars):
            if math.isnan(bar.value):  # no images of this row in this arm: no bar
                continue
            y = y0 + lay.row_gap / 2 + j * lay.bar_height
            tip = f"{bar.series} · {row.label}: {with_ci(bar.value, bar.low, bar.high)}"
            if bar.n is not None:
                tip += f" (n={bar.n})"
            drawn = element("title", tip) + element(
                "rect",
                x=left,
                y=y + 0.5,
                width=x(bar.value) - left,
                height=lay.bar_height - 1,
                fill=colors.get(bar.series, "#777"),
            )
            if not (math.isnan(bar.low) or math.isnan(bar.high)):
                mid = y + lay.bar_height / 2
                lo, hi = x(bar.low), x(bar.high)
                drawn += element("line", x1=lo, x2=hi, y1=mid, y2=mid, class_="fd-whisker")
                for end in (lo, hi):
                    drawn += element("line", x1=end, x2=end, y1=mid - 2.5, y2=mid + 2.5, class_="fd-whisker")
            parts.append(element("g", drawn, class_="fd-bar"))
        if row.target is not None:
            tip = element("title", f"target {row.label}: {number(row.target)}")
            line = element("line", x1=x(row.target), x2=x(row.target), y1=y0 + 1, y2=y0 + band - 1)
            parts.append(element("g", tip + line, class_="fd-target"))
        if row.truth is not None:
            cx, cy, r = x(row.truth), y0 + band / 2, 4.0
            points = f"{cx:.1f},{cy - r:.1f} {cx + r:.1f},{cy:.1f} {cx:.1f},{cy + r:.1f} {cx - r:.1f},{cy:.1f}"
            tip = element("title", f"world truth {row.label}: {number(row.truth)}")
            parts.append(element("g", tip + element("polygon", points=points), class_="fd-truth"))
    return element(
        "svg",
        Markup("").join(parts),
        id=chart_id,
        class_=f"fd-chart fd-{kind}",
        width=width,
        height=height,
        viewBox=f"0 0 {width} {height}",
        role="img",
        aria_label=description,
    )
