"""The decoding policy on a generated corpus of bad inputs: each gets its expected status."""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas_core.data import DecodePolicy, Status, decode

log = logging.getLogger(__name__)


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def build_corpus(root: Path, outside: Path) -> dict[str, tuple[Path, Status]]:
    """name -> (path, expected status)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[bytes | None, Status]] = {
        "good.jpg": (_jpeg(rgb), Status.OK),
        "truncated.jpg": (_jpeg(rgb)[:300], Status.TRUNCATED),
        "zero.jpg": (b"", Status.TRUNCATED),
        "page.jpg": (b"<html><body>404 not found</body></html>", Status.UNIDENTIFIED),
        "png_named.jpg": (_png(Image.fromarray(rgb)), Status.OK),
        "cmyk.jpg": (None, Status.OK),
        "grey.png": (_png(Image.fromarray(rgb[..., 0])), Status.OK),
        "palette_alpha.png": (None, Status.OK),
        "sixteen.png": (_png(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)), Status.OK),
        "exif_rotated.jpg": (None, Status.OK),
        "bomb.png": (_png(Image.new("L", (9000, 9000))), Status.DECOMPRESSION_BOMB),
        "animated.gif": (None, Status.OK),
        "one_pixel.png": (_png(Image.new("RGB", (1, 1))), Status.TOO_SMALL),
        "we ird;name$(rm -rf)\u00e9.png": (_png(Image.fromarray(rgb)), Status.OK),
    }
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG")
    files["cmyk.jpg"] = (buf.getvalue(), Status.OK)
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    files["palette_alpha.png"] = (_png(pal), Status.OK)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    files["exif_rotated.jpg"] = (_jpeg(rgb, exif=exif.tobytes()), Status.OK)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    files["animated.gif"] = (buf.getvalue(), Status.OK)
    out: dict[str, tuple[Path, Status]] = {}
    for name, (data, status) in files.items():
        (root / name).write_bytes(data or b"")
        out[name] = (root / name, status)
    os.mkfifo(root / "fifo.jpg")
    out["fifo.jpg"] = (root / "fifo.jpg", Status.NOT_REGULAR_FILE)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.jpg").write_bytes(_jpeg(rgb))
    os.symlink(outside / "secret.jpg", root / "escape.jpg")
    out["escape.jpg"] = (root / "escape.jpg", Status.OUTSIDE_ROOT)
    out["missing.jpg"] = (root / "missing.jpg", Status.MISSING)
    return out


def test_every_bad_input_gets_its_status(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path / "root", tmp_path / "outside")
    root = str((tmp_path / "root").resolve())
    policy = DecodePolicy(max_pixels=40_000_000)
    got = {name: decode(str(p), None, policy=policy, root=root) for name, (p, _) in corpus.items()}
    wrong = {
        n: (got[n].status.name, e.name, got[n].detail)
        for n, (_, e) in corpus.items()
        if got[n].status != e
    }
    counts = Counter(d.status.name.lower() for d in got.values())
    log.info(
        "bad inputs: %d tried, %d classified as expected; %s",
        len(corpus),
        len(corpus) - len(wrong),
        dict(counts),
    )
    assert wrong == {}
    for d in got.values():
        assert (d.image is None) == (d.status != Status.OK)
        if d.image is not None:
            assert d.image.mode == "RGB"


def test_normalization_policy(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path / "root", tmp_path / "outside")
    img = {n: decode(str(p)).image for n, (p, s) in corpus.items() if s == Status.OK}
    assert img["exif_rotated.jpg"].size == (40, 60)  # 60x40 stored, rotated for display
    assert img["good.jpg"].size == (60, 40)
    arr = np.asarray(img["palette_alpha.png"])
    assert (arr.reshape(-1, 3) == 255).all(axis=1).any()  # transparent index composited on white
    assert np.asarray(img["sixteen.png"]).max() > 200  # 16-bit scaled, not clipped to 255 / 257


def test_crop_and_hash_are_per_file(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path / "root", tmp_path / "outside")
    p = str(corpus["png_named.jpg"][0])
    whole, part = decode(p), decode(p, np.array([10, 5, 30, 25]))
    assert part.image is not None and part.image.size == (20, 20)
    assert whole.content_hash == part.content_hash != 0
    assert np.array_equal(np.asarray(whole.image)[5:25, 10:30], np.asarray(part.image))


@pytest.mark.timeout(30)
def test_fifo_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    assert decode(str(tmp_path / "pipe.png")).status == Status.NOT_REGULAR_FILE
