"""Layer lookup by module name, hooks that always come off again, and the feature-map adapter.

``capture`` records the outputs of named modules during a forward pass; ``stop_at`` also ends the
forward pass right after the deepest of them, so nothing past the target layer is computed.
Both are context managers: the hooks are removed on exit, whatever happened inside.

Every recorded output is a feature map (B, C, H, W): a convolutional layer's as it is; a
transformer layer's tokens (B, N, C) mapped to its patch grid (B, C, h, w) after dropping the
model's own prefix tokens (class, distillation, registers), whose number and the patch size are
read from the model (timm's ``num_prefix_tokens`` and ``patch_embed.patch_size``), never guessed
from N (:class:`TokenGrid`). Everything after the adapter sees one shape; anything else stops
with an error naming the layer and its shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

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


@dataclass(frozen=True)
class TokenGrid:
    """How a transformer lays out its tokens: ``prefix`` tokens first (class, distillation,
    registers), then one token per ``patch`` (ph, pw) pixels, row-major."""

    prefix: int
    patch: tuple[int, int]

    @staticmethod
    def of(model: nn.Module) -> TokenGrid | None:
        """The model's layout, read from it (timm's ViT family), or None."""
        prefix = getattr(model, "num_prefix_tokens", None)
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        if prefix is None or patch is None:
            return None
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        return TokenGrid(int(prefix), (int(ph), int(pw)))

    @staticmethod
    def fixed_size(model: nn.Module) -> bool:
        """Whether the model is a transformer with fixed position embeddings (a token grid and
        no ``dynamic_img_size``): it only takes its own input size."""
        return TokenGrid.of(model) is not None and not getattr(model, "dynamic_img_size", False)

    def to_map(self, tokens: torch.Tensor, input_hw: tuple[int, int], name: str) -> torch.Tensor:
        """(B, N, C) tokens of an input of ``input_hw`` -> (B, C, h, w) patch tokens."""
        b, n, c = tokens.shape
        h, w = input_hw[0] // self.patch[0], input_hw[1] // self.patch[1]
        if n != self.prefix + h * w:
            raise ConfigError(
                "layer",
                name,
                fix=f"layer {name} gives {n} tokens for a {input_hw[0]}x{input_hw[1]} input, "
                f"not {self.prefix} prefix tokens + {h}x{w} patches of {self.patch[0]}x"
                f"{self.patch[1]} px: pick a layer whose output is the token sequence (a block, "
                "or its MLP's fc1).",
            )
        return tokens[:, self.prefix :].transpose(1, 2).reshape(b, c, h, w)

    def to_tokens(self, prefix: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
        """The inverse: prefix tokens (B, P, C) and a patch map (B, C, h, w) -> (B, N, C)."""
        return torch.cat([prefix, fmap.flatten(2).transpose(1, 2)], dim=1)


def prefix_key(name: str) -> str:
    """Where :func:`capture` puts a transformer layer's prefix tokens (B, P, C): the class token
    first (``extract.sampling=cls``)."""
    return f"{name}#prefix"


class _Adapter:
    """Per capture: the model's token layout and the size of the input being run."""

    def __init__(self, model: nn.Module) -> None:
        self.grid = TokenGrid.of(model)
        self.input_hw: tuple[int, int] | None = None
        self.handle = model.register_forward_pre_hook(self._input)

    def _input(self, _m: nn.Module, args: tuple[object, ...]) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            self.input_hw = (int(x.shape[-2]), int(x.shape[-1]))

    def check(self, output: object, name: str) -> torch.Tensor:
        """``output`` as it is when it is a feature map; tokens are for :meth:`to_map`."""
        if isinstance(output, torch.Tensor) and (
            output.ndim == 4
            or (output.ndim == 3 and self.grid is not None and self.input_hw is not None)
        ):
            return output
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(
            "layer",
            name,
            fix=f"layer {name} outputs {shape}, neither a feature map (B, C, H, W) nor the tokens "
            "(B, N, C) of a model that names its prefix tokens and patch size (timm's "
            "num_prefix_tokens, patch_embed.patch_size): pick another layer.",
        )

    def to_map(self, output: torch.Tensor, name: str) -> torch.Tensor:
        if output.ndim == 4:
            return output
        assert self.grid is not None and self.input_hw is not None  # checked
        return self.grid.to_map(output, self.input_hw, name)

    def remove(self) -> None:
        self.handle.remove()


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


@contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named modules: ``with capture(m, ["blocks.4"]) as out: m(x)``."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    adapter = _Adapter(model)
    try:
        for name in names:
            module = resolve_layer(model, name)
            handles.append(module.register_forward_hook(_recorder(out, name, adapter)))
        yield out
    finally:
        adapter.remove()
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


def _recorder(
    out: dict[str, torch.Tensor], name: str, adapter: _Adapter, graph: bool = False
) -> Hook:
    def hook(_m: nn.Module, _i: object, output: torch.Tensor) -> torch.Tensor | None:
        output = adapter.check(output, name)
        if not graph:
            out[name] = adapter.to_map(output, name)
            if output.ndim == 3 and adapter.grid is not None and adapter.grid.prefix:
                out[prefix_key(name)] = output[:, : adapter.grid.prefix]
            return None
        if not output.requires_grad:
            # nothing upstream needs a gradient (frozen weights): start the graph here. Later
            # captured layers are computed from this tensor, so they stay in the graph too and
            # gradients reach every captured layer (a detach per layer would cut the earlier
            # ones off from the logits).
            output = output.detach().requires_grad_(True)
        if output.ndim == 4:
            out[name] = output
            return output
        # tokens: the rest of the model runs on tokens rebuilt from the patch map, so the map
        # is on the path to the logits and d logits / d map is a gradient of the map itself
        assert adapter.grid is not None
        fmap = adapter.to_map(output, name)
        out[name] = fmap
        return adapter.grid.to_tokens(output[:, : adapter.grid.prefix], fmap)

    return hook


@contextmanager
def capture_leaves(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Like ``capture``, but every recorded output is in the autograd graph of the model's
    output, so ``torch.autograd.grad(logits, out[name])`` gives d logits / d activation of each
    named layer, several layers in one pass."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    adapter = _Adapter(model)
    try:
        for name in names:
            handles.append(
                resolve_layer(model, name).register_forward_hook(
                    _recorder(out, name, adapter, graph=True)
                )
            )
        yield out
    finally:
        adapter.remove()
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
