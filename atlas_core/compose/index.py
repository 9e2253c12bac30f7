"""An index of runs: one static page (and its JSON) comparing atlases side by side.

Used for a sweep's folder and a schedule's root. Each row is a plain dict summarised from a
run's ``manifest.json`` (:func:`run_row`); the page shows each atlas as a thumbnail with its
model, layer, preset, status, counts, seconds, trustworthiness, icon fidelity and plausibility,
linking to the run's viewer, and where the run was diffed (against a sweep's first run, or a
schedule's previous date) the diff's figures and page; a schedule's index also draws each
figure over the dates (atlas_core/compose/trend.py). Every string from data is escaped; the
page loads nothing from the network.
"""

from __future__ import annotations

import html
from typing import Any

from atlas_core.compose.trend import trends, trends_html
from atlas_core.compose.viewer import url_path

COLUMNS = (
    ("run", "run"),
    ("status", "status"),
    ("model", "model"),
    ("layer", "layer"),
    ("preset", "preset"),
    ("images_ok", "images ok"),
    ("images_failed", "failed"),
    ("cells", "cells"),
    ("icons", "icons"),
    ("seconds", "seconds"),
    ("trustworthiness", "trustworthiness"),
    ("fidelity", "icon fidelity"),
    ("plausibility", "plausibility margin (finest level)"),
    ("top5", "own cell in top 5 (chance)"),
    ("against", "diffed against"),
    ("neighbourhood_preservation", "neighbourhood preservation"),
    ("flip_rate", "flip rate"),
)


def run_row(name: str, manifest: dict[str, Any] | None, error: str = "") -> dict[str, Any]:
    """The index row of one run (``name``: its folder relative to the index) from its manifest;
    a run with no manifest, or an error, is a failed row that keeps the error's text."""
    if manifest is None:
        return {"run": name, "status": "failed", "error": error or "no manifest.json"}
    if manifest.get("status") == "failed":
        error = error or str(manifest.get("error", "failed"))
    st = manifest.get("stages", {})

    def get(stage: str, part: str, key: str) -> Any:
        return (st.get(stage) or {}).get(part, {}).get(key)

    statuses = {k: str(v.get("status", "")) for k, v in st.items()}
    done = all(v.startswith(("done", "skipped")) for v in statuses.values()) and statuses
    cells = get("grid", "counts", "cells_kept") or {}
    judged = get("plausibility", "counts", "levels") or {}
    finest = judged[max(judged, key=int)]["icons"] if judged else {}
    return {
        "run": name,
        "status": "failed"
        if manifest.get("status") == "failed"
        else "done"
        if done
        else "incomplete",
        "model": manifest.get("model"),
        "layer": manifest.get("layer"),
        "preset": manifest.get("preset"),
        "images_ok": get("extract", "counts", "images_ok"),
        "images_failed": get("extract", "counts", "images_failed"),
        "cells": sum(cells.values()) if isinstance(cells, dict) else cells,
        "icons": get("render", "counts", "icons"),
        "seconds": manifest.get("seconds_total"),
        "trustworthiness": get("reduce", "details", "trustworthiness_k10"),
        "fidelity": get("render", "details", "fidelity_cosine_mean"),
        "plausibility": finest.get("margin_mean"),
        "top5": f"{finest['top5']:.3f} ({finest['chance_top5']:.3f})" if "top5" in finest else None,
        "date": manifest.get("date"),
        "error": error,
    }


def index_html(title: str, rows: list[dict[str, Any]], compare: str | None = None) -> str:
    """The index page: a card per run (thumbnail ``<run>/atlas.png``, link ``<run>/viewer/``,
    and its diff's page and figures when it has one), a table of every figure, the trends of a
    schedule's figures over its dates, and a link to ``compare`` (a sweep's comparison page)."""
    e = html.escape
    cards, lines = [], []
    for r in rows:
        run, url = e(str(r["run"]), quote=True), e(url_path(str(r["run"])), quote=True)
        thumb = (
            f'<a href="{url}/viewer/index.html"><img src="{url}/atlas.png" alt="atlas {run}"></a>'
            if r.get("status") != "failed"
            else f'<div class="failed">failed: {e(str(r.get("error", "")))}</div>'
        )
        cap = " / ".join(e(str(r.get(k))) for k in ("model", "layer", "preset") if r.get(k))
        cards.append(
            f"<figure>{thumb}<figcaption><b>{run}</b> {cap}{_diff_note(r)}</figcaption></figure>"
        )
        cells = "".join(f"<td>{e(_fmt(r.get(k)))}</td>" for k, _ in COLUMNS)
        lines.append(f'<tr class="{e(str(r.get("status")), quote=True)}">{cells}</tr>')
    head = "".join(f"<th>{e(label)}</th>" for _, label in COLUMNS)
    failed = sum(1 for r in rows if r.get("status") == "failed")
    link = (
        f'<p class="compare"><a href="{e(compare, quote=True)}">Compare the atlases</a>: a grid of '
        "linked maps, where each cell's samples went, each run's figures</p>"
        if compare
        else ""
    )
    return _PAGE.format(
        title=e(title),
        n=len(rows),
        failed=failed,
        compare=link,
        trends=trends_html(trends(rows)),
        cards="\n".join(cards),
        head=head,
        rows="\n".join(lines),
    )


def _diff_note(r: dict[str, Any]) -> str:
    """A card's line about its diff: against which run, its figures, a link to its page."""
    e = html.escape
    if not r.get("against"):
        return ""
    if r.get("diff_error"):
        against = e(str(r["against"]))
        return f'<br><span class="note">not diffed against {against}: other images</span>'
    href = e(url_path(f"{r['run']}/{r['diff']}"), quote=True)
    figures = (
        f"neighbourhood preservation {_fmt(r.get('neighbourhood_preservation'))}, "
        f"flip rate {_fmt(r.get('flip_rate'))}"
    )
    return f'<br><a href="{href}">diff vs {e(str(r["against"]))}</a>: {e(figures)}'


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; width: 260px; }}
figure img {{ width: 260px; height: 260px; object-fit: contain; border: 1px solid #ccc; }}
.failed {{ width: 256px; height: 256px; border: 2px dashed #b35806; padding: 2px;
  overflow: auto; }}
table {{ border-collapse: collapse; margin-top: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; }}
tr.failed td {{ background: #fee0b6; }}
table.trends th {{ text-align: left; font-weight: normal; }}
svg.trend circle {{ fill: #2b5c8a; }}
.compare {{ font-size: 16px; }}
</style></head><body>
<h1>{title}</h1>
<p>{n} runs, {failed} failed.</p>
{compare}
<div class="grid">
{cards}
</div>
<table><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
{trends}
</body></html>
"""
