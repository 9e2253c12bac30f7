"""A model's card: what the pipeline needs to know about a model without loading it again.

Computed once per run from the loaded model (:meth:`ModelCard.of`), kept in the run store's
attributes beside the extraction, and handed to every stage: the shapes of the extracted layers,
the classes, the preprocessing, a transformer's token grid, and each layer's measured receptive
field. The driver loads the model once to make it and never for metadata again; workers load
their own copy of the model to compute.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from atlas_core.errors import ConfigError
from atlas_core.models.layers import TokenGrid, layer_shapes, resolve_layer
from atlas_core.models.preprocess import Preprocess
from atlas_core.models.receptive import ReceptiveField, receptive_field
from atlas_core.models.registry import LoadedModel, ModelSpec

CARD_VERSION = 1


@dataclass(frozen=True)
class ModelCard:
    """spec: the model and its weights. preprocess: its input. layers: (C, H, W) of each layer
    the card was made for. num_classes and class_names: the class head (0 and () without one).
    token_grid: a transformer's prefix tokens and patch size (None for a conv net); fixed_size:
    it only takes its own input size. fields: each layer's receptive field (theoretical and
    effective sides in input pixels) for the effective field's ``mass``."""

    spec: ModelSpec
    preprocess: Preprocess
    layers: dict[str, tuple[int, int, int]]
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    token_grid: TokenGrid | None = None
    fixed_size: bool = False
    fields: dict[str, ReceptiveField] = field(default_factory=dict)
    mass: float = 0.9

    @classmethod
    def of(cls, model: LoadedModel, layers: Sequence[str], *, mass: float = 0.9) -> ModelCard:
        """The card of a loaded ``model`` for ``layers`` (each checked: a name the model lacks
        is a ConfigError listing its layers)."""
        for name in layers:
            resolve_layer(model.module, name, model_name=model.spec.name)
        size = model.preprocess.size
        shapes = layer_shapes(model.module, list(layers), size)
        fields_ = {L: receptive_field(model.module, L, size, mass=mass) for L in layers}
        return cls(
            spec=model.spec,
            preprocess=model.preprocess,
            layers=shapes,
            num_classes=int(model.num_classes),
            class_names=tuple(model.class_names),
            token_grid=TokenGrid.of(model.module),
            fixed_size=TokenGrid.fixed_size(model.module),
            fields=fields_,
            mass=mass,
        )

    def covers(self, spec: ModelSpec, layers: Sequence[str], mass: float) -> bool:
        """Whether this card answers for ``spec`` at ``layers`` with fields of ``mass``."""
        return self.spec == spec and set(layers) <= set(self.layers) and self.mass == mass

    # ------------------------------------------------------------------ classes
    def class_name(self, index: int) -> str:
        if 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    def class_index(self, name: str | int) -> int:
        """The class called ``name``: an index, the full name or one of its comma-separated
        synonyms ("tabby" for "tabby, tabby cat"), any case. A ConfigError lists near names."""
        text = str(name).strip()
        if text.isdigit() and int(text) < self.num_classes:
            return int(text)
        low = text.lower()
        for i in range(self.num_classes):
            full = self.class_name(i).lower()
            if low == full or low in (p.strip() for p in full.split(",")):
                return i
        names = [self.class_name(i) for i in range(self.num_classes)]
        near = difflib.get_close_matches(text, names, n=5)
        raise ConfigError(
            "class",
            name,
            choices=near or None,
            fix=f"give a class index (0-{self.num_classes - 1}) or a class name of the model.",
        )

    # ------------------------------------------------------------------ stored form
    def to_json(self) -> dict[str, Any]:
        return {
            "version": CARD_VERSION,
            "spec": asdict(self.spec),
            "preprocess": asdict(self.preprocess),
            "layers": {k: list(v) for k, v in self.layers.items()},
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "token_grid": asdict(self.token_grid) if self.token_grid else None,
            "fixed_size": self.fixed_size,
            "fields": {k: asdict(v) for k, v in self.fields.items()},
            "mass": self.mass,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelCard | None:
        """The card stored as ``d``, or None for another card format."""
        if d.get("version") != CARD_VERSION:
            return None
        grid = d.get("token_grid")
        pre = {**d["preprocess"]}
        pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
        return cls(
            spec=ModelSpec(**d["spec"]),
            preprocess=Preprocess(**pre),
            layers={k: (int(v[0]), int(v[1]), int(v[2])) for k, v in d["layers"].items()},
            num_classes=int(d["num_classes"]),
            class_names=tuple(d["class_names"]),
            token_grid=TokenGrid(grid["prefix"], tuple(grid["patch"])) if grid else None,
            fixed_size=bool(d["fixed_size"]),
            fields={
                k: ReceptiveField(v["theoretical"], v["effective"], tuple(v["grid"]), v["input_px"])
                for k, v in d["fields"].items()
            },
            mass=float(d["mass"]),
        )
