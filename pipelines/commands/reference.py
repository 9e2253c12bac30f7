"""The configuration reference and ``atlas --help``, generated from the settings' schema.

Every key's default comes from its dataclass (:mod:`pipelines.core.settings` and the library
values the groups derive from), its one line of what it does from the comment beside (or above)
its field, each group's line from its docstring, and each YAML option's line from the first
comment of its file under ``conf/``. ``docs/reference/configuration.md`` is this module's output
(``python -m pipelines.commands.reference > docs/reference/configuration.md``; a test keeps them
equal), so the reference cannot go stale.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from atlas_core.config import Group
from pipelines.commands.catalog import COMMANDS
from pipelines.core.settings import ActorResources, Settings, groups

CONF = Path(str(resources.files("atlas_conf")))
CHOSEN = ("model", "data", "cluster", "preset", "experiment", "debug")  # groups with YAML options
REFERENCE = "docs/reference/configuration.md"


# ------------------------------------------------------------------------------ field docs
@cache
def _class_docs(cls: type) -> dict[str, str]:
    """The comment beside, or the comments right above, each field declared in ``cls`` itself."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    body = ast.parse(source).body[0]
    out: dict[str, str] = {}
    if not isinstance(body, ast.ClassDef):
        return out
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        own = [_comment(lines[i]) for i in range(node.lineno - 1, node.end_lineno or node.lineno)]
        above: list[str] = []
        i = node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            above.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        text = " ".join(x for x in [*above, *own] if x)
        out[node.target.id] = text
    return out


def _comment(line: str) -> str:
    """A line's trailing comment (outside strings), or ''."""
    in_str: str | None = None
    for i, ch in enumerate(line):
        if in_str:
            in_str = None if ch == in_str else in_str
        elif ch in "\"'":
            in_str = ch
        elif ch == "#":
            return line[i + 1 :].strip()
    return ""


def field_doc(cls: type, name: str) -> str:
    """What field ``name`` of ``cls`` does (from the first class in its MRO that declares it)."""
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return _class_docs(klass).get(name, "")
    return ""


def group_line(cls: type) -> str:
    """A group's one line: its docstring's first sentence, without the ``group:`` prefix."""
    doc = " ".join((inspect.getdoc(cls) or "").split())
    head, _, rest = doc.partition(": ")
    text = rest if head.isidentifier() else doc
    return text.split(". ")[0].rstrip(".")


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    text = str(value)
    if text.startswith("${"):
        return f"`{text}`"
    if isinstance(value, tuple):
        text = "[" + ", ".join(str(v) for v in value) + "]"
    return f"`{'null' if value is None else text}`"


def rows(cls: type, prefix: str) -> list[tuple[str, str, str]]:
    """(key, default, what) of every setting of ``cls`` under ``prefix``; a nested value (a
    stage's resources under ``cluster``) is one row; the groups of ``Settings`` are their own
    tables."""
    out: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if isinstance(default, Group):
            continue
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            inner = ", ".join(f"{k}: {v}" for k, v in dataclasses.asdict(default).items())
            out.append((f"{prefix}{f.name}", f"`{{{inner}}}`", field_doc(cls, f.name)))
            continue
        out.append((f"{prefix}{f.name}", _default(f), field_doc(cls, f.name)))
    return out


# ------------------------------------------------------------------------------ options
def options(group: str) -> list[tuple[str, str]]:
    """(option, the first sentence of its file's first comment) of a group with YAML options."""
    out = []
    for path in sorted((CONF / group).glob("*.yaml")):
        head = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            if "@package" not in line:
                head.append(line.lstrip("#").strip())
        text = " ".join(head)
        end = text.find(". ")
        out.append((path.stem, text[: end + 1] if end >= 0 else text))
    return out


def _defaults() -> dict[str, str]:
    """The option each group takes by default (conf/config.yaml's defaults list)."""
    out = {}
    for line in (CONF / "config.yaml").read_text().splitlines():
        item = line.strip().removeprefix("- ")
        if ": " in item and not item.startswith(("override", "optional", "#")):
            group, value = item.split(": ", 1)
            out[group] = value.strip()
    return out


# ------------------------------------------------------------------------------ outputs
def configuration_reference() -> str:
    """docs/reference/configuration.md: every group, option and key with its default."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the schema by `python -m pipelines.commands.reference`; do not edit.",
        "Give a YAML option as `GROUP=OPTION` and a key as `KEY=VALUE` (`atlas render.steps=256`).",
        "A misspelled key fails when the config is composed; a value out of its range or not",
        "among its choices stops the run before any work, naming the key, the value and the fix.",
        "",
        "## Options",
        "",
    ]
    chosen = _defaults()
    for group in CHOSEN:
        out += [f"### `{group}`", "", "| option | what |", "|---|---|"]
        for name, what in options(group):
            mark = " (default)" if chosen.get(group) == name else ""
            out.append(f"| `{group}={name}`{mark} | {_cell(what)} |")
        out.append("")
    out += ["## Keys", "", "### The run", "", "| key | default | what |", "|---|---|---|"]
    out += [f"| `{k}` | {d} | {_cell(w)} |" for k, d, w in rows(Settings, "")]
    for name, cls in groups().items():
        line = group_line(cls)
        out += ["", f"### `{name}`", "", line[:1].upper() + line[1:] + ".", ""]
        out += ["| key | default | what |"]
        out += ["|---|---|---|"]
        out += [f"| `{k}` | {d} | {_cell(w)} |" for k, d, w in rows(cls, f"{name}.")]
    out += ["", "### A stage's resources (`cluster.<entry>.*`)", "", "| key | default | what |"]
    out += ["|---|---|---|"]
    out += [f"| `{k}` | {d} | {_cell(w)} |" for k, d, w in rows(ActorResources, "")]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def help_text() -> str:
    """``atlas --help``: the commands first, then the groups a person chooses, then the keys."""
    chosen = _defaults()
    lines = [
        "atlas: activation atlases (Carter et al., Distill 2019) from one laptop to a Ray cluster.",
        "",
        "Usage:",
        "  atlas [GROUP=OPTION ...] [KEY=VALUE ...]   build an atlas (the demo configuration)",
        "  atlas -m KEY=A,B [...]                     a sweep: a run per combination and an index",
        "  atlas COMMAND ...                          one of the commands below",
        "",
        "Commands:",
        *(f"  {f'{c} {args}':<22} {what}" for c, (args, what) in COMMANDS.items()),
        "",
        "Choose (GROUP=OPTION; the default in brackets):",
    ]
    for group in CHOSEN:
        names = [n if n != chosen.get(group) else f"[{n}]" for n, _ in options(group)]
        lines.append(f"  {group:<11} {', '.join(names)}")
    lines += ["", "Settings of each stage and of the run (KEY=VALUE, e.g. render.steps=256):"]
    for name, cls in groups().items():
        if name not in CHOSEN:
            lines.append(f"  {name + '.*':<15} {_short(group_line(cls), 62)}")
    lines += [
        "  run_dir, layer, seed, stages=[...], run_root, date, layers=[...]: see the reference",
        "",
        "Examples:",
        "  atlas                         the demo: runs/demo/viewer/index.html",
        "  atlas debug=fast              the toy model and a few images: seconds",
        "  atlas data=folder data.path=/my/images layer=blocks.5 run_dir=/out",
        "  atlas preset=r3 cluster=ray_cluster run_dir=s3://bucket/atlas",
        "",
        f"Every key, its default and what it does: {REFERENCE}",
        "Hydra's own options (--cfg job, --info, -m ...): atlas --hydra-help",
    ]
    return "\n".join(lines) + "\n"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rsplit(" ", 1)[0] + "..."


def main(argv: list[str] | None = None) -> int:
    sys.stdout.write(configuration_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
