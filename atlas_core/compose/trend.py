"""Each figure of a schedule's runs over their dates, and the small trend lines the index draws.

A row of the index (:func:`atlas_core.compose.index.run_row`) with a ``date`` is one point of
each trend: the run's trustworthiness, icon fidelity and plausibility margin, and from its diff
with the previous date (``compare.json``) its flip rate and neighbourhood preservation. Failed
runs are left out; a figure a run lacks is a gap (``None``). The line is inline SVG (no script,
nothing loaded), its points titled with their date and value.
"""

from __future__ import annotations

import html
import math
from typing import Any

# (row key, what the index calls it)
FIGURES = (
    ("trustworthiness", "trustworthiness"),
    ("fidelity", "icon fidelity"),
    ("plausibility", "plausibility margin"),
    ("flip_rate", "flip rate vs the previous date"),
    ("neighbourhood_preservation", "neighbourhood preservation vs the previous date"),
)


def trends(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per figure, ``[{"date", "value"}, ...]`` over the dated rows that did not fail, by date
    (empty when no row has a date: a sweep's index)."""
    dated = sorted(
        (r for r in rows if r.get("date") and r.get("status") != "failed"),
        key=lambda r: str(r["date"]),
    )
    if not dated:
        return {}
    return {
        key: [{"date": str(r["date"]), "value": _value(r.get(key))} for r in dated]
        for key, _ in FIGURES
    }


def _value(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def sparkline(points: list[dict[str, Any]], width: int = 160, height: int = 32) -> str:
    """An inline SVG line through the points' values (gaps skipped), the last one marked; the
    vertical range is the values' own (a flat line when they are equal)."""
    values = [(i, p["value"]) for i, p in enumerate(points) if p["value"] is not None]
    label = "; ".join(f"{p['date']}: {_fmt(p['value'])}" for p in points)
    svg = (
        f'<svg class="trend" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{html.escape(label, quote=True)}">'
    )
    if not values:
        return svg + "</svg>"
    lo, hi = min(v for _, v in values), max(v for _, v in values)
    pad, n = 4, max(1, len(points) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * (i / n if len(points) > 1 else 0.5)
        y = height / 2 if hi == lo else pad + (height - 2 * pad) * (hi - v) / (hi - lo)
        return round(x, 1), round(y, 1)

    line = " ".join(f"{x},{y}" for x, y in (xy(i, v) for i, v in values))
    dots = "".join(
        f'<circle cx="{x}" cy="{y}" r="{3 if j == len(values) - 1 else 1.6}">'
        f"<title>{html.escape(points[i]['date'])}: {_fmt(v)}</title></circle>"
        for j, (i, v) in enumerate(values)
        for x, y in [xy(i, v)]
    )
    poly = f'<polyline fill="none" stroke="#2b5c8a" stroke-width="1.5" points="{line}"/>'
    return svg + poly + dots + "</svg>"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def trends_html(series: dict[str, list[dict[str, Any]]]) -> str:
    """The index's table of trends: a row per figure, its line and its first and last values."""
    if not series or len(next(iter(series.values()))) < 1:
        return ""
    e = html.escape
    rows = []
    for key, label in FIGURES:
        pts = series.get(key, [])
        vals = [p["value"] for p in pts if p["value"] is not None]
        span = f"{_fmt(vals[0])} &rarr; {_fmt(vals[-1])}" if vals else "n/a"
        rows.append(
            f'<tr data-figure="{e(key, quote=True)}"><th>{e(label)}</th>'
            f"<td>{sparkline(pts)}</td><td>{span}</td></tr>"
        )
    dates = [p["date"] for p in next(iter(series.values()))]
    return (
        f"<h2>Trends over {len(dates)} dates ({e(dates[0])} to {e(dates[-1])})</h2>"
        '<table class="trends"><tbody>' + "".join(rows) + "</tbody></table>"
    )
