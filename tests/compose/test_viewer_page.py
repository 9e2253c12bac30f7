"""The page and data file escape every string and carry the Content-Security-Policy."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from atlas_core.compose import data_script, page_html
from atlas_core.compose.viewer import CSP, source_name

EVIL = '</script><img src=x onerror=alert(1)>&"\u2028'


def test_data_file_holds_names_as_json_strings_only() -> None:
    js = data_script({"classes": [EVIL], "title": EVIL})
    assert "<" not in js and ">" not in js and "&" not in js and "\u2028" not in js
    blob = re.search(r"run: (\{.*\})\}\);", js)
    assert blob is not None
    assert json.loads(blob.group(1))["classes"] == [EVIL]


def test_page_has_no_inline_script_and_a_strict_policy() -> None:
    page = page_html(EVIL, ['data/atlas.js" onload="x', "../other/viewer/data/atlas.js"])
    assert "<img src=x" not in page and 'onload="x' not in page
    assert f'content="{CSP}"' in page and "'unsafe-inline'" not in CSP
    assert "script-src 'self'" in CSP and "default-src 'none'" in CSP
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all('src="' in attrs and body == "" for attrs, body in scripts)
    attrs: list[str] = []

    class Attrs(HTMLParser):
        def handle_starttag(self, tag: str, a: list) -> None:
            attrs.extend(name for name, _ in a)

    Attrs().feed(page)
    assert "src" in attrs and not [a for a in attrs if a.startswith("on")]  # no inline handler


def test_source_names_are_file_names() -> None:
    assert source_name("/data/cats/a b.jpg") == "a b.jpg"
    assert source_name("tar://dir/x.png::s3://bucket/shard-0.tar") == "x.png"
    assert source_name("s3://bucket/key/<img>.jpg") == "<img>.jpg"
