"""The documentation cannot rot quietly: the site builds with ``mkdocs build --strict`` (a broken
link, a missing anchor, a page outside the navigation or a missing included file fails), the
command-line page shows what ``atlas --help`` prints, links between pages also work where GitHub
renders the Markdown, and the README stays a five-minute read that names the three commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pipelines.commands.reference import help_text

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CLI_PAGE = DOCS / "reference" / "cli.md"
HELP_BEGIN, HELP_END = "<!-- help:", "<!-- end of help -->"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), not an image
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, f"`make docs` fails:\n{out.stdout}\n{out.stderr}"
    built = {p.relative_to(site).with_suffix(".md") for p in site.rglob("*.html")}
    pages = {p.relative_to(DOCS) for p in DOCS.rglob("*.md")}
    assert pages <= built, f"pages not built: {sorted(map(str, pages - built))}"
    # infra/README.md is included from beside the manifests, not copied
    first = (ROOT / "infra" / "README.md").read_text().splitlines()[0].lstrip("# ")
    assert first.split(":")[0] in (site / "reference" / "infra.html").read_text()
    index = (site / "index.html").read_text()
    assert "fonts.googleapis" not in index and "unpkg.com" not in index  # nothing loads remotely


def test_the_command_line_page_is_atlas_help() -> None:
    text = CLI_PAGE.read_text()
    block = text[text.index(HELP_BEGIN) : text.index(HELP_END)]
    shown = block.split("```text\n", 1)[1].rsplit("```", 1)[0]
    assert shown == help_text(), (
        "paste `atlas --help` between the markers of docs/reference/cli.md, in the text block"
    )


def test_the_readme_is_a_five_minute_read() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200, "the README is at most 200 lines: move detail to docs/"
    for command in ("make demo", "make test", "make docs"):
        assert command in text, command
    assert "docs/demo-atlas.png" in text and "docs/demo-viewer.png" in text


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, each
    space a hyphen (Python-Markdown's slugify differs only on characters avoided here)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    body = FENCE.sub("", page.read_text())
    return {github_slug(h) for h in re.findall(r"^#{1,6} +(.+?) *$", body, re.M)}


def test_links_and_images_resolve_as_github_renders_them() -> None:
    """Every relative link of the README and the docs names a file that exists, and every
    ``#anchor`` a heading of the page it points to, as GitHub slugs headings; every image
    exists. (The strict build checks the site; this checks the same Markdown on GitHub.)"""
    broken = []
    for page in _pages():
        body = FENCE.sub("", page.read_text())
        for target in LINK.findall(body) + IMAGE.findall(body):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            rel = page.relative_to(ROOT)
            if not dest.exists():
                broken.append(f"{rel}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{rel}: {target} (no such heading)")
    assert broken == [], "\n".join(broken)
