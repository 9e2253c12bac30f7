"""Settings as frozen values: the one place a setting is declared and checked.

Every settings value of the library (an icon's settings, UMAP's parameters, ...) is a frozen
dataclass deriving from :class:`Group`. It checks its ranges and choices on construction and
raises :class:`~atlas_core.errors.ConfigError` naming the setting: the bare field name when the
library is used directly (``steps``), the full key when the value is a settings group of the
pipeline's config tree (a subclass that sets ``GROUP = "render"`` gives ``render.steps``). The
pipeline's groups derive from these values and add only orchestration fields (batch sizes,
workers, caches), so each setting is declared once, with one default, one check and one
message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields
from typing import Any, ClassVar

from atlas_core.errors import ConfigError

# field metadata of a setting that never changes an output (batch sizes, caches, workers): it is
# left out of the value's identity, hence out of every fingerprint and cache key
NOT_FINGERPRINTED: Mapping[str, Any] = {"fingerprint": False}


def choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    """Refuse ``value`` unless it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(key, value, choices=choices, fix=f"set {key}=<one of the choices>.")


def in_range(key: str, value: Any, lo: float | None = None, hi: float | None = None) -> None:
    """``lo <= value <= hi`` (either bound may be open); bools are not numbers here."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    bad = bad or (lo is not None and value < lo) or (hi is not None and value > hi)
    if bad:
        span = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(key, value, valid=span, fix=f"set {key} to a number in {span}.")


class Group:
    """Base of every settings value. ``GROUP`` names its group in the config tree (empty for a
    value used by the library alone); checks name ``GROUP.field``."""

    GROUP: ClassVar[str] = ""

    def key(self, name: str) -> str:
        """The full key of field ``name``: ``render.steps`` in the config tree, else ``steps``."""
        return f"{self.GROUP}.{name}" if self.GROUP else name

    def _tuples(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))

    def _ranges(self, spec: dict[str, tuple[float | None, float | None]]) -> None:
        for name, (lo, hi) in spec.items():
            v = getattr(self, name)
            if v is not None:
                in_range(self.key(name), v, lo, hi)

    def _choice(self, name: str, choices: Iterable[Any]) -> None:
        choice(self.key(name), getattr(self, name), choices)

    def identity(self) -> dict[str, Any]:
        """What this value contributes to a fingerprint: every field but those marked
        ``NOT_FINGERPRINTED``. A value whose fields do not all matter in every setting (an icon
        objective's own parameters) overrides this to return only those that do."""
        skip = {f.name for f in fields(self) if f.metadata.get("fingerprint") is False}  # type: ignore[arg-type]
        return {k: v for k, v in asdict(self).items() if k not in skip}  # type: ignore[call-overload]
