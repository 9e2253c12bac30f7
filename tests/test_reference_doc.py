"""The configuration reference and ``atlas --help`` come from the schema, so neither can go
stale: the reference in docs/ equals the generated one, every key has a line of what it does,
and the help page starts with the commands and the groups a person chooses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipelines.commands.catalog import COMMANDS
from pipelines.commands.reference import REFERENCE, configuration_reference, groups, rows
from pipelines.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_the_configuration_reference_is_generated_from_the_schema() -> None:
    doc = (ROOT / REFERENCE).read_text()
    assert doc == configuration_reference(), (
        "run `python -m pipelines.commands.reference > docs/reference/configuration.md`"
    )
    keys = [k for k, _, _ in rows(Settings, "")]
    for name, cls in groups().items():
        keys += [k for k, _, _ in rows(cls, f"{name}.")]
    assert {"render.steps", "reduce.n_neighbors", "cluster.render", "data.path"} <= set(keys)
    for key in keys:
        assert f"| `{key}` |" in doc, key


def test_every_key_says_what_it_does() -> None:
    silent = [k for k, _, what in rows(Settings, "") if not what]
    for name, cls in groups().items():
        silent += [k for k, _, what in rows(cls, f"{name}.") if not what]
    assert silent == [], f"add a comment beside these fields: {silent}"


def test_atlas_help_starts_with_the_commands_and_the_groups_to_choose() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.index("Commands:") < text.index("Choose (GROUP=OPTION")
    for name in COMMANDS:
        assert f"\n  {name} " in text, name
    assert "[efficientnet_lite0], googlenet" in text and "preset      [demo], r1, r2, r3" in text
    assert "render.*" in text and REFERENCE in text
    assert "_schema" not in text  # the internal schemas are no options to pick
