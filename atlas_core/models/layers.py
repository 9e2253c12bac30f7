"""Layer lookup by module name, and hooks that always come off again.

``capture`` records the outputs of named modules during a forward pass; ``stop_at`` also ends the
forward pass right after the deepest of them, so nothing past the target layer is computed.
Both are context managers: the hooks are removed on exit, whatever happened inside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from atlas_core.errors import ConfigError


def layer_names(model: nn.Module) -> list[str]:
    """Every addressable layer name (``model.named_modules()`` without the root)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str, *, model_name: str = "model") -> nn.Module:
    """The module called ``name``; a ConfigError listing the model's layers if there is none."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    shallow = [n for n in layer_names(model) if n.count(".") <= 1]
    raise ConfigError(
        "layer",
        name,
        choices=shallow,
        fix=f"pick a layer of {model_name} (any name from model.named_modules() works; "
        "the list shows the top two levels).",
    )


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


@contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named modules: ``with capture(m, ["blocks.4"]) as out: m(x)``."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            module = resolve_layer(model, name)
            handles.append(module.register_forward_hook(_recorder(out, name)))
        yield out
    finally:
        for h in handles:
            h.remove()


@contextmanager
def stop_at(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Like ``capture``, but the forward pass ends once every named output is recorded.

    Call the model through :func:`run_until`; it swallows the internal stop signal.
    """
    with capture(model, names) as out:
        wanted = set(names)

        def check(_m: nn.Module, _i: object, _o: object) -> None:
            if wanted.issubset(out):
                raise _Stop

        handles = [resolve_layer(model, n).register_forward_hook(check) for n in names]
        try:
            yield out
        finally:
            for h in handles:
                h.remove()


def run_until(model: nn.Module, x: torch.Tensor) -> None:
    """Run ``model(x)`` inside :func:`stop_at`, stopping silently at the last wanted layer."""
    try:
        model(x)
    except _Stop:
        pass


Hook = Callable[[nn.Module, object, torch.Tensor], "torch.Tensor | None"]


def _recorder(out: dict[str, torch.Tensor], name: str, graph: bool = False) -> Hook:
    def hook(_m: nn.Module, _i: object, output: torch.Tensor) -> torch.Tensor | None:
        if graph and not output.requires_grad:
            # nothing upstream needs a gradient (frozen weights): start the graph here. Later
            # captured layers are computed from this tensor, so they stay in the graph too and
            # gradients reach every captured layer (a detach per layer would cut the earlier
            # ones off from the logits).
            output = output.detach().requires_grad_(True)
            out[name] = output
            return output
        out[name] = output
        return None

    return hook


@contextmanager
def capture_leaves(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Like ``capture``, but every recorded output is in the autograd graph of the model's
    output, so ``torch.autograd.grad(logits, out[name])`` gives d logits / d activation of each
    named layer, several layers in one pass."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            handles.append(
                resolve_layer(model, name).register_forward_hook(_recorder(out, name, graph=True))
            )
        yield out
    finally:
        for h in handles:
            h.remove()


def layer_shapes(
    model: nn.Module, names: Sequence[str], size: int, device: torch.device | str = "cpu"
) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of each named layer for a square input of ``size`` pixels, from one dummy pass."""
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), stop_at(model, names) as out:
        run_until(model, x)
    shapes = {n: out[n].shape for n in names}
    return {n: (int(s[1]), int(s[2]), int(s[3])) for n, s in shapes.items()}
