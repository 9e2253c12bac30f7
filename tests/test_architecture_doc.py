"""docs/architecture.md holds the stage table the registry gives (``atlas stages``)."""

from __future__ import annotations

from pathlib import Path

from pipelines.commands.stages import BEGIN, END, table
from pipelines.stages import REGISTRY

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def test_the_architecture_doc_is_the_registry() -> None:
    text = DOC.read_text()
    doc_table = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert doc_table == table(), "run `atlas stages` and paste its output into the doc"
    rows = [line for line in doc_table.splitlines() if line.startswith("| **")]
    assert [r.split("**")[1] for r in rows] == list(REGISTRY.names)
