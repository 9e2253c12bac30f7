"""Labels of the inputs: the class a person gives each image, as the model's class indices.

A label is an index into the model's classes (ImageNet-1k's 1000 for the demo's models), so a
prediction is "correct" when it equals the label; -1 means "no label". Three sources:
``folder_labels`` (ImageNet synset folders, in :mod:`atlas_core.data.sources`), the demo's
photos (:data:`PHOTO_LABELS`), and a labels file (:func:`file_labels`).
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from atlas_core.data.uri import is_uri_text, uri_path, uri_text
from atlas_core.errors import ConfigError

log = logging.getLogger(__name__)

# The ImageNet-1k class a person would give each built-in photo (its main subject), by file
# name; photos whose subject no ImageNet class names get no label (-1):
#
#   chelsea.png           285 Egyptian cat  (a short-haired striped cat: ImageNet's cat classes
#                                            are fine-grained; the demo models agree)
#   coffee.png            967 espresso      (a cup of espresso on its saucer)
#   camera.png            872 tripod        (the cameraman's camera stands on a tripod, the
#                                            largest object; there is no "cameraman")
#   china.jpg             698 palace        (the Summer Palace's Tower of Buddhist Incense)
#   rocket.jpg            657 missile       (a launch vehicle on its pad: ImageNet's "missile"
#                                            is where rockets are; there is no "rocket")
#   motorcycle_left.png   665 moped         (ImageNet has no "motorcycle"; mappings of COCO's
#   motorcycle_right.png  665 moped          "motorcycle" to ImageNet take moped/motor scooter)
#   astronaut.png          -1  (an astronaut in a spacesuit: no such class)
#   flower.jpg             -1  (a dahlia: the only flower classes are daisy and lady's slipper)
#   coins.png, moon.png, page.png, hubble_deep_field.jpg: -1 (coins, the lunar surface, a page
#       of text, galaxies: no such classes)
#   brick.png, grass.png, gravel.png: -1 (textures, not objects)
#   ihc.png, retina.jpg: -1 (microscopy and a fundus photograph)
PHOTO_LABELS: dict[str, int] = {
    "chelsea.png": 285,
    "coffee.png": 967,
    "camera.png": 872,
    "china.jpg": 698,
    "rocket.jpg": 657,
    "motorcycle_left.png": 665,
    "motorcycle_right.png": 665,
}


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class descriptions in class-index order (timm's table), e.g.
    ``names[285] == "Egyptian cat"``."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(str(info.index_to_description(i)) for i in range(1000))


def photo_labels(names: Sequence[str]) -> np.ndarray:
    """(N,) int32 ImageNet class of each built-in photo file name (:data:`PHOTO_LABELS`, -1
    for a photo without one)."""
    return np.array([PHOTO_LABELS.get(n, -1) for n in names], dtype=np.int32)


def file_labels(
    uris: np.ndarray,
    path: str,
    *,
    root: str | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels from a labels file: each line maps a file to a class index or a class name.

    uris: (N,) URI texts of the manifest; root: their folder (a URI text; None: the file names
    the URIs whole). path: ``.csv`` (two columns, path and class; a first row naming the
    columns is skipped) or any other text file (``path<TAB>class``, or ``path class`` split on
    the last space when there is no tab). Paths are relative to ``root``, with ``/``; a name
    that is not UTF-8 is written as its bytes or as its URI text. A class is an index into
    ``class_names`` (ImageNet-1k's by default) or one of its names (the full description or
    one of its comma-separated synonyms, any case).
    Returns ((N,) int32 labels, -1 for files the labels file does not name; class_names).
    ConfigError for an unknown or ambiguous class, or a file given two different classes.
    """
    import fsspec

    names = tuple(class_names) if class_names is not None else imagenet_class_names()
    try:
        with fsspec.open(path, "rb") as f:
            text = os.fsdecode(f.read())
    except FileNotFoundError as exc:
        raise ConfigError(
            "labels", path, fix="give a labels file: one 'path,class' line per image."
        ) from exc
    lookup = _class_lookup(names)
    wanted: dict[str, int] = {}
    for entry, cls in _rows(text, csv_format=path.lower().endswith(".csv"), path=path):
        key = _key(uri_path(entry if is_uri_text(entry) else uri_text(entry)))
        label = _resolve(cls, names, lookup, path)
        if wanted.setdefault(key, label) != label:
            raise ConfigError(
                "labels", path, fix=f"{entry!r} is given two classes; keep one line per file."
            )
    top = uri_path(root) if root is not None else None
    keys = [_key(os.path.relpath(uri_path(str(u)), top) if top else uri_path(str(u))) for u in uris]
    labels = np.array([wanted.get(k, -1) for k in keys], dtype=np.int32)
    unmatched = set(wanted) - set(keys)
    log.info(
        "labels from %s: %d of %d images labelled, %d entries name no listed image%s",
        path,
        int((labels >= 0).sum()),
        len(labels),
        len(unmatched),
        f" (e.g. {sorted(unmatched)[:3]})" if unmatched else "",
    )
    return labels, names


def _key(p: str) -> str:
    return os.path.normpath(p).replace(os.sep, "/")


def _rows(text: str, *, csv_format: bool, path: str) -> list[tuple[str, str]]:
    """(path, class) of every non-empty, non-comment line; a CSV's header row dropped."""
    lines = [ln for ln in text.split("\n") if ln.strip() and not ln.lstrip().startswith("#")]
    if csv_format:
        rows = [r for r in csv.reader(io.StringIO("\n".join(lines))) if r]
        out = [(r[0].strip(), r[-1].strip() if len(r) > 1 else "") for r in rows]
        if out and out[0][1].lower() in ("label", "class", "class_index", "index", "target"):
            out = out[1:]
    else:
        out = []
        for ln in (ln.rstrip("\r") for ln in lines):
            entry, _, cls = ln.rpartition("\t") if "\t" in ln else ln.strip().rpartition(" ")
            out.append((entry.strip(), cls.strip()))
    bad = [f"{e},{c}" for e, c in out if not e or not c]
    if bad:
        raise ConfigError(
            "labels", path, fix=f"every line must be 'path,class'; these are not: {bad[:3]}"
        )
    return out


def _class_lookup(names: Sequence[str]) -> dict[str, int]:
    """Lower-cased class name or synonym -> index; -2 for a synonym two classes share."""
    out: dict[str, int] = {}
    for i, desc in enumerate(names):
        for alias in {desc.strip().lower(), *(a.strip().lower() for a in desc.split(","))}:
            if alias:
                out[alias] = -2 if out.get(alias, i) != i else i
    return out


def _resolve(cls: str, names: Sequence[str], lookup: dict[str, int], path: str) -> int:
    if cls.lstrip("-").isdigit():
        i = int(cls)
        if not 0 <= i < len(names):
            raise ConfigError("labels", cls, valid=f"[0, {len(names) - 1}]", fix=f"in {path}.")
        return i
    i = lookup.get(cls.lower(), -1)
    if i == -2:
        matches = [j for j, d in enumerate(names) if cls.lower() in d.lower().split(", ")]
        raise ConfigError(
            "labels", cls, choices=matches, fix=f"{cls!r} names several classes; give the index."
        )
    if i < 0:
        close = difflib.get_close_matches(cls.lower(), list(lookup), n=5)
        raise ConfigError(
            "labels", cls, choices=close, fix=f"use a class name or index of the model ({path})."
        )
    return i
