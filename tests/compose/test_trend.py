"""The index's trends: per figure the dated, unfailed rows in date order, gaps kept; the line's
points follow the values (the largest at the top), and nothing from the data becomes markup."""

from __future__ import annotations

import re

from atlas_core.compose.trend import sparkline, trends, trends_html


def test_trends_follow_the_dates_and_keep_gaps() -> None:
    rows = [
        {
            "run": "b",
            "date": "2026-01-08",
            "status": "done",
            "trustworthiness": 0.8,
            "flip_rate": 0.25,
        },
        {"run": "a", "date": "2026-01-01", "status": "done", "trustworthiness": 0.9},
        {"run": "c", "date": "2026-01-15", "status": "failed", "trustworthiness": 0.1},
        {
            "run": "d",
            "date": "2026-01-22",
            "status": "done",
            "trustworthiness": float("nan"),
            "flip_rate": 0.5,
        },
    ]
    t = trends(rows)
    assert [p["date"] for p in t["trustworthiness"]] == ["2026-01-01", "2026-01-08", "2026-01-22"]
    assert [p["value"] for p in t["trustworthiness"]] == [0.9, 0.8, None]
    assert [p["value"] for p in t["flip_rate"]] == [None, 0.25, 0.5]
    assert trends([{"run": "x", "status": "done"}]) == {}  # a sweep: no dates, no trends


def test_the_line_goes_up_where_the_value_does() -> None:
    pts = [
        {"date": "d<1>", "value": 0.2},
        {"date": "d2", "value": None},
        {"date": "d3", "value": 0.6},
        {"date": "d4", "value": 0.4},
    ]
    svg = sparkline(pts, width=100, height=30)
    line = re.search(r'points="([^"]+)"', svg).group(1).split()
    xy = [tuple(map(float, p.split(","))) for p in line]
    assert len(xy) == 3 and xy[0][0] < xy[1][0] < xy[2][0]
    assert xy[1][1] == 4 and xy[0][1] == 26 and xy[0][1] > xy[2][1] > xy[1][1]  # y grows down
    assert "<1>" not in svg and "d&lt;1&gt;" in svg
    page = trends_html(trends([{"run": "a", "date": "2026-01-01", "status": "done"}]))
    assert page.count('<svg class="trend"') == 5
