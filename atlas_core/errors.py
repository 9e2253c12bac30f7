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
        valid: str = "",
        fix: str = "",
    ) -> None:
        self.what = what
        self.value = value
        self.choices = list(choices) if choices is not None else None
        self.valid = valid
        self.fix = fix
        msg = f"{what}: {value!r} is not valid."
        if valid:
            msg += f" Valid range: {valid}."
        if self.choices is not None:
            shown = ", ".join(str(c) for c in self.choices[:60])
            more = f" (and {len(self.choices) - 60} more)" if len(self.choices) > 60 else ""
            msg += f" Valid choices: {shown}{more}."
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)

    def __reduce__(self) -> tuple[object, ...]:  # picklable: a task's error reaches the driver
        return (_config_error, (self.what, self.value, self.choices, self.valid, self.fix))

    def at(self, prefix: str, name: str | None = None) -> ConfigError:
        """The same error for the setting ``prefix.name`` (a caller maps the library's parameter
        name to its own key; the fix text is kept)."""
        what = f"{prefix}.{name or self.what}"
        return ConfigError(what, self.value, choices=self.choices, valid=self.valid, fix=self.fix)


class StoreError(AtlasError):
    """The run store is missing, inconsistent, or was written by an incompatible plan."""


class PlanError(StoreError):
    """A write plan whose tasks would share a storage object (a race under zarr's rules)."""


def _config_error(
    what: str, value: object, choices: list[object] | None, valid: str, fix: str
) -> ConfigError:
    return ConfigError(what, value, choices=choices, valid=valid, fix=fix)
