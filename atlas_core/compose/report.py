"""The failure-mode patch report page: the patches, before/after examples and the flip table.

A static page with no script at all; every string (class names, file names) is escaped, and the
Content-Security-Policy allows only images and the style sheet beside it.
"""

from __future__ import annotations

import html
from typing import Any

CSP = "default-src 'none'; img-src 'self'; style-src 'self'; base-uri 'none'; form-action 'none'"
CSS = """body { font: 14px system-ui, sans-serif; margin: 16px; color: #1a1a1a; max-width: 1100px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; } td.l, th.l { text-align: left; }
figure { display: inline-block; margin: 4px 8px 8px 0; vertical-align: top; }
figcaption { font-size: 12px; max-width: 240px; }
img.patch { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #999; }
img.ex { width: 224px; height: 224px; border: 1px solid #999; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _top3(preds: list[list[Any]]) -> str:
    return "<br>".join(f"{_e(name)} {p:.2f}" for name, p in preds)


def report_html(report: dict[str, Any]) -> str:
    """The page of one pair's report (see ``pipelines/patches.py`` for its fields)."""
    a, b = report["a_name"], report["b_name"]
    patches = "".join(
        f'<figure><img class="patch" src="{_e(p["file"])}" alt="patch {i}">'
        f"<figcaption>patch {i}: cell ({p['cell'][0]}, {p['cell'][1]}), mean attribution to "
        f"{_e(b)} {p['attribution']:.4f}</figcaption></figure>"
        for i, p in enumerate(report["patches"])
    )
    rows = "".join(
        f"<tr><td>{r['patch']}</td><td>{r['size']}</td><td class='l'>{_e(r['corner'])}</td>"
        f"<td>{r['flips']} / {report['images']}</td><td>{r['flip_rate']:.3f}</td>"
        f"<td>{r['control_flips']}</td><td>{r['control_rate']:.3f}</td></tr>"
        for r in report["table"]
    )
    examples = "".join(
        f'<figure><img class="ex" src="{_e(x["before"])}" alt="before"><figcaption>'
        f"{_e(x['source'])}: before<br>{_top3(x['before_top3'])}</figcaption></figure>"
        f'<figure><img class="ex" src="{_e(x["after"])}" alt="after"><figcaption>after '
        f"(patch 0, {x['size']} px, {_e(x['corner'])})<br>{_top3(x['after_top3'])}"
        "</figcaption></figure><br>"
        for x in report["examples"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>Failure-mode patches: {_e(a)} to {_e(b)}</title>
<link rel="stylesheet" href="report.css"></head><body>
<h1>Patches from {_e(b)} pasted into {_e(a)}</h1>
<p>{report["images"]} images the model classifies as {_e(a)}; a flip is a top-1 prediction of
{_e(b)} after pasting. The control is a random-noise patch of the same size and place.
Best: {report["best"]["flip_rate"]:.3f} (patch {report["best"]["patch"]}, {report["best"]["size"]}
px, {_e(report["best"]["corner"])}) against {report["best"]["control_rate"]:.3f}; all patches,
sizes and corners: {report["flip_rate"]:.3f} against {report["control_rate"]:.3f}.</p>
<h2>Patches</h2>{patches}
<h2>Flip rates</h2>
<table><tr><th>patch</th><th>size (px)</th><th class="l">corner</th><th>flips</th>
<th>flip rate</th><th>control flips</th><th>control rate</th></tr>{rows}</table>
<h2>Before and after</h2>{examples}
</body></html>
"""
