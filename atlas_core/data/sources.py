"""Image sources, frozen into an :class:`InputManifest` at the start of a run.

Row ``i`` of every per-image array in the run store belongs to entry ``i`` of the manifest, so
the manifest is computed once, stored, and never recomputed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from atlas_core.data.labels import imagenet_class_names, photo_labels
from atlas_core.data.uri import as_uri_texts, is_uri_text, uri_text
from atlas_core.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# Crop side / the photo's short side, drawn in turn: whole photos, then closer views.
PHOTO_SCALES = (1.0, 0.6, 0.4, 0.25)

# Real photographs that scikit-image and scikit-learn install (not drawings, charts or masks).
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
)
_SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


@dataclass(frozen=True)
class InputManifest:
    """The frozen list of inputs of a run.

    uris: shape (N,), object array of str: local paths or fsspec URLs, as URI texts
        (:mod:`atlas_core.data.uri`: valid UTF-8 whatever the file names' bytes). An entry that
        cannot be a text (an undecodable byte, a control character: a raw file-system name) is
        replaced by its ``uri_text`` on construction, so the store can always hold the list.
    crops: shape (N, 4), int32 boxes (left, top, right, bottom) in source pixels; -1 = whole image.
    root: the directory every local path must stay inside (None: no confinement), a URI text.
    labels: (N,) int32 class per image (-1 unknown), e.g. from synsets; label_names: the name
        of each class index.
    unreadable: folders that could not be listed (URI texts): their files are not in the
        manifest, so the run reports them instead.
    """

    uris: np.ndarray
    crops: np.ndarray
    root: str | None = None
    labels: np.ndarray | None = None
    label_names: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.crops.shape != (len(self.uris), 4):
            raise ValueError(f"crops must have shape ({len(self.uris)}, 4), got {self.crops.shape}")
        listed = [str(u) for u in self.uris]
        texts = as_uri_texts(listed)
        if texts is not listed:
            object.__setattr__(self, "uris", np.array(texts, dtype=object))
        if self.root is not None and not is_uri_text(self.root):
            object.__setattr__(self, "root", uri_text(self.root))

    def __len__(self) -> int:
        return len(self.uris)


def builtin_photos() -> list[Path]:
    """Paths of the real photographs shipped inside scikit-image and scikit-learn."""
    import skimage
    import sklearn.datasets

    sk_dir = Path(skimage.__file__).parent / "data"
    sl_dir = Path(sklearn.datasets.__file__).parent / "images"
    paths = [sk_dir / n for n in _SKIMAGE_PHOTOS] + [sl_dir / n for n in _SKLEARN_PHOTOS]
    found = [p for p in paths if p.is_file()]
    if not found:
        raise ConfigError("source", "photos", fix="pip install scikit-image scikit-learn.")
    return found


def photo_crops(
    n: int, *, seed: int = 0, scales: tuple[float, ...] = PHOTO_SCALES
) -> InputManifest:
    """``n`` seeded square crops of the built-in photos, at several scales.

    Each crop takes a photo (in turn), a side of ``scale * min(w, h)`` pixels and a uniform
    random position. The same ``(n, seed, scales)`` always gives the same manifest. Each crop is
    labelled with its photo's ImageNet class (:data:`atlas_core.data.labels.PHOTO_LABELS`: e.g.
    chelsea 285 Egyptian cat, coffee 967 espresso; -1 for textures and scientific images);
    ``label_names`` are the 1000 ImageNet class names, so a label is a model class index.
    """
    if n <= 0:
        raise ConfigError("n", n, valid="[1, inf]", fix="ask for at least one image.")
    photos = builtin_photos()
    sizes = np.array([Image.open(p).size for p in photos])  # header only, no decode
    rng = np.random.default_rng(seed)
    which = np.arange(n) % len(photos)
    frac = np.asarray(scales, dtype=np.float64)[rng.integers(0, len(scales), n)]
    crops = _draw(rng, sizes[which], frac)
    # A crop drawn twice (a square photo at scale 1.0 has one position) would be the same input
    # twice: re-draw repeats a little smaller, deterministically, until every crop is distinct.
    for _ in range(32):
        key = np.concatenate([which[:, None], crops], axis=1)
        _, first = np.unique(key, axis=0, return_index=True)
        again = np.setdiff1d(np.arange(n), first)
        if not len(again):
            break
        frac[again] *= 0.9
        crops[again] = _draw(rng, sizes[which[again]], frac[again])
    uris = np.array([uri_text(str(photos[i])) for i in which], dtype=object)
    labels = photo_labels([photos[i].name for i in which])
    return InputManifest(
        uris=uris, crops=crops, root=None, labels=labels, label_names=imagenet_class_names()
    )


def _draw(rng: np.random.Generator, sizes: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Square boxes of side ``frac * min(w, h)`` (at least 16 px) at uniform positions."""
    side = np.maximum((frac * sizes.min(axis=1)).astype(np.int64), 16)
    left = (rng.random(len(sizes)) * (sizes[:, 0] - side + 1)).astype(np.int64)
    top = (rng.random(len(sizes)) * (sizes[:, 1] - side + 1)).astype(np.int64)
    return np.stack([left, top, left + side, top + side], axis=1).astype(np.int32)


def folder_manifest(
    path: str, *, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, limit: int | None = None
) -> InputManifest:
    """Every file under ``path`` (recursive, sorted) whose extension looks like an image.

    Files are listed, not opened: a file that is not a valid image is classified when it is
    decoded, so it gets a status in the store instead of vanishing from the manifest. Names are
    stored as URI texts (any bytes round-trip); folders that cannot be listed are in
    ``unreadable``.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError("path", str(path), fix="give an existing directory.")
    exts = tuple(e.lower() for e in extensions)
    found: list[str] = []
    unreadable: list[str] = []

    def skipped(exc: OSError) -> None:  # a folder os.walk cannot list: counted, never dropped
        unreadable.append(uri_text(str(exc.filename or "?")))
        log.warning(
            "folder %s cannot be listed (%s): its files are not inputs", unreadable[-1], exc
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=skipped, followlinks=False):
        dirnames.sort()
        found.extend(
            uri_text(os.path.join(dirpath, f))
            for f in sorted(filenames)
            if f.lower().endswith(exts)
        )
    if limit is not None:
        found = found[:limit]
    if not found:
        unlisted = f" ({len(unreadable)} folders could not be listed: check their permissions)"
        raise ConfigError(
            "path",
            str(path),
            fix=f"the directory holds no files ending in {', '.join(exts)}"
            f"{unlisted if unreadable else ''}; add images or change the extensions.",
        )
    crops = np.full((len(found), 4), -1, dtype=np.int32)
    return InputManifest(
        uris=np.array(found, dtype=object),
        crops=crops,
        root=uri_text(str(root.resolve())),
        unreadable=tuple(unreadable),
    )


def folder_labels(uris: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """ImageNet-style labels: the index of each file's parent folder name (a synset such as
    ``n01440764``) among the sorted distinct folder names."""
    parents = np.array([Path(u).parent.name for u in uris], dtype=object)
    names = tuple(sorted(set(parents)))
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[p] for p in parents], dtype=np.int32), names


def file_list_manifest(path: str, *, limit: int | None = None) -> InputManifest:
    """One input per non-empty line of a text file: local paths or fsspec URLs (s3://, gs://).

    A line's entry is not checked here; one that cannot be read gets a status when decoded.
    """
    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            # bytes that are not UTF-8 are a name's own bytes (surrogate escapes, made URI texts
            # by the manifest); a line that is valid text is taken as a URI text as it is
            text = os.fsdecode(f.read())
        lines = [ln.strip() for ln in text.split("\n") if ln.strip() and not ln.startswith("#")]
    except FileNotFoundError as exc:
        raise ConfigError(
            "path", path, fix="give a text file with one image path or URL per line."
        ) from exc
    if limit is not None:
        lines = lines[:limit]
    if not lines:
        raise ConfigError("path", path, fix="the file list is empty.")
    return InputManifest(
        uris=np.array(lines, dtype=object),
        crops=np.full((len(lines), 4), -1, dtype=np.int32),
        root=None,
    )
