"""An index of runs: one static page (and its JSON) comparing atlases side by side.

Used for a sweep's folder and a schedule's root. Each row is a plain dict summarised from a
run's ``manifest.json`` (:func:`run_row`); the page shows each atlas as a thumbnail with its
model, layer, preset, status, counts, seconds, trustworthiness, icon fidelity and plausibility,
linking to the run's viewer. Every string from data is escaped; the page loads nothing from the
network.
"""

from __future__ import annotations

import html
from typing import Any

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


def index_html(title: str, rows: list[dict[str, Any]]) -> str:
    """The index page: a card per run (thumbnail ``<run>/atlas.png``, link ``<run>/viewer/``)
    and a table of every figure."""
    e = html.escape
    cards, lines = [], []
    for r in rows:
        run = e(str(r["run"]), quote=True)
        thumb = (
            f'<a href="{run}/viewer/index.html"><img src="{run}/atlas.png" alt="atlas {run}"></a>'
            if r.get("status") != "failed"
            else f'<div class="failed">failed: {e(str(r.get("error", "")))}</div>'
        )
        cap = " / ".join(e(str(r.get(k))) for k in ("model", "layer", "preset") if r.get(k))
        cards.append(f"<figure>{thumb}<figcaption><b>{run}</b> {cap}</figcaption></figure>")
        cells = "".join(f"<td>{e(_fmt(r.get(k)))}</td>" for k, _ in COLUMNS)
        lines.append(f'<tr class="{e(str(r.get("status")), quote=True)}">{cells}</tr>')
    head = "".join(f"<th>{e(label)}</th>" for _, label in COLUMNS)
    failed = sum(1 for r in rows if r.get("status") == "failed")
    return _PAGE.format(
        title=e(title),
        n=len(rows),
        failed=failed,
        cards="\n".join(cards),
        head=head,
        rows="\n".join(lines),
    )


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
</style></head><body>
<h1>{title}</h1>
<p>{n} runs, {failed} failed.</p>
<div class="grid">
{cards}
</div>
<table><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
</body></html>
"""
