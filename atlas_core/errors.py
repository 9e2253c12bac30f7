"""Exceptions of the library; messages name the bad value, the choices and the fix."""

from __future__ import annotations

from collections.abc import Iterable


class AtlasError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(AtlasError, ValueError):
    """A setting a user can get wrong: raised before any work starts.

    The message always names the bad value, the valid choices (when there are few enough to list)
    and what to do about it.
    """

    def __init__(
        self,
        what: str,
        value: object,
        *,
        choices: Iterable[object] | None = None,
        fix: str = "",
    ) -> None:
        self.what = what
        self.value = value
        self.choices = list(choices) if choices is not None else None
        self.fix = fix
        msg = f"{what}: {value!r} is not valid."
        if self.choices is not None:
            shown = ", ".join(str(c) for c in self.choices[:60])
            more = f" (and {len(self.choices) - 60} more)" if len(self.choices) > 60 else ""
            msg += f" Valid choices: {shown}{more}."
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)


class StoreError(AtlasError):
    """The run store is missing, inconsistent, or was written by an incompatible plan."""


class PlanError(StoreError):
    """A write plan whose tasks would share a storage object (a race under zarr's rules)."""
