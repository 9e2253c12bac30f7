"""Weight files: safetensors first, else ``torch.load(weights_only=True)``; never unpickled.

Nothing here downloads. A file is either given as a path or looked up in the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), where ``torch.hub`` would have stored it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from atlas_core.errors import ConfigError

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module")


def hub_checkpoint(filename: str) -> Path:
    """Path of ``filename`` in the torch hub cache; ConfigError if it is not there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise ConfigError(
            "weights",
            f"hub:{filename}",
            fix=f"nothing is downloaded at run time: copy {filename} to {path.parent}/ "
            "or pass model.weights=/path/to/file (.safetensors or .pth).",
        )
    return path


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(map_location="cpu", weights_only=True)``, which refuses arbitrary pickles.
    A checkpoint that wraps its weights (``{"state_dict": ...}``) is unwrapped, and a
    ``module.`` prefix left by DataParallel is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            "weights",
            str(path),
            fix="give the path of an existing .safetensors or .pth file.",
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Mapping[str, object] = load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, a short read: the file is damaged
            raise ConfigError(
                "weights",
                str(path),
                fix=f"the file is not a readable safetensors file ({type(exc).__name__}: "
                f"{exc}): it is truncated or damaged. Copy it again (compare its size and "
                "checksum with the source), or give a .pth state dict instead.",
            ) from exc
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # refused code objects, or a damaged file: say so plainly
            raise ConfigError(
                "weights",
                str(path),
                fix=f"the file could not be read safely ({type(exc).__name__}: {exc}). If it "
                "is truncated or damaged, copy it again; if it pickles code, convert it to "
                "safetensors or save a plain state_dict of tensors.",
            ) from exc
    for key in _WRAPPER_KEYS:
        inner = sd.get(key) if isinstance(sd, Mapping) else None
        if isinstance(inner, Mapping):
            sd = inner
            break
    if not isinstance(sd, Mapping):
        raise ConfigError("weights", str(path), fix="the file must hold a state dict.")
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            out[k.removeprefix("module.")] = v
    return out


ARCHITECTURE_ONLY = "architecture"  # model.weights for shapes and FLOPs only (atlas plan)


def load_by_name_or_position(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str
) -> None:
    """Load ``state`` into ``module``: by key where the keys match, else by position.
    ``source="architecture"`` loads nothing: the module keeps its initial weights (planning a
    run needs its shapes and FLOPs, not its weights, which may live only on the cluster).

    Loading by position is for checkpoints of the same architecture saved under other names
    (EfficientNet-Lite0's original release against timm's module names). It is refused unless
    the two have the same number of tensors with every shape equal, in order.
    """
    if source == ARCHITECTURE_ONLY:
        return
    target = module.state_dict()
    same_names = set(state) == set(target)
    if same_names:
        src = [(k, state[k]) for k in target]
    else:
        src = list(state.items())
    dst = list(target.items())
    mismatch = len(src) != len(dst) or any(
        a.shape != b.shape for (_, a), (_, b) in zip(src, dst, strict=False)
    )
    if mismatch:
        raise ConfigError(
            "weights",
            source,
            fix=f"the file holds {len(src)} tensors that match neither the names nor, in order, "
            f"the shapes of the model's {len(dst)} tensors: check the architecture.",
        )
    if not same_names:
        log.info("loading %d tensors from %s by position", len(src), source)
    module.load_state_dict({k: v for (k, _), (_, v) in zip(dst, src, strict=False)}, strict=True)
