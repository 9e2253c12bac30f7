"""Tiles, overview strips and density sizing against the one-canvas reference (compose_canvas)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from atlas_core.compose import compose_canvas
from atlas_core.compose.tiles import (
    cell_rows_in,
    density_scale,
    draw_region,
    edges,
    icon_boxes,
    sheet,
    zoom_ranges,
)
from atlas_core.store import RunLocation


def _level(size: int, px: int, m: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(size * size, m, replace=False))
    cells = np.stack([flat % size, flat // size], axis=1)
    icons = rng.integers(0, 256, (m, px, px, 3), dtype=np.uint8)
    count = rng.integers(1, 50, m)
    return cells, icons, count


def test_each_icon_lands_at_its_cell_with_y_up() -> None:
    cells = np.array([[0, 0], [2, 1], [1, 2]])
    icons = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30)])
    canvas = compose_canvas(cells, icons, 3, present=np.array([True, True, False]))
    assert (canvas[8:12, 0:4] == 10).all()  # (0, 0): bottom-left
    assert (canvas[4:8, 8:12] == 20).all()  # (2, 1): middle row, right
    assert (canvas == 255).sum() == 12 * 12 * 3 - 2 * 16 * 3


@pytest.mark.parametrize("tile", [8, 16, 32])
def test_tiles_at_native_size_stitch_to_the_reference_canvas(tile: int) -> None:
    size, px = 8, 8  # map width 64 = tile * 2^z
    cells, icons, count = _level(size, px, 40)
    ref = compose_canvas(cells, icons, size)
    width = size * px
    boxes = icon_boxes(cells, density_scale(count, enabled=False), size, width)
    n = width // tile
    stitched = np.concatenate(
        [
            np.concatenate(
                [
                    draw_region(boxes, icons, (x * tile, y * tile, (x + 1) * tile, (y + 1) * tile))
                    for x in range(n)
                ],
                axis=1,
            )
            for y in range(n)
        ],
        axis=0,
    )
    np.testing.assert_array_equal(stitched, ref)


def test_strips_at_any_scale_equal_one_region_and_share_a_resize_cache() -> None:
    size, px, width = 7, 12, 50  # 50 / 7: cells of 7 or 8 pixels, no seams between strips
    cells, icons, count = _level(size, px, 30, seed=1)
    boxes = icon_boxes(cells, density_scale(count), size, width)
    whole = draw_region(boxes, icons, (0, 0, width, width))
    cache: dict = {}
    ids = np.arange(len(cells))
    strips = [
        draw_region(boxes, icons, (0, y, width, min(width, y + 9)), cache=cache, ids=ids)
        for y in range(0, width, 9)
    ]
    np.testing.assert_array_equal(np.concatenate(strips, axis=0), whole)
    assert 0 < len(cache) <= len(cells)


def test_density_sizes_each_icon_by_sqrt_count_over_mean_and_centres_it() -> None:
    size, width = 4, 400  # 100-pixel cells
    cells = np.array([[0, 0], [1, 0], [3, 3]])
    count = np.array([10, 40, 160])  # mean 70
    scale = density_scale(count)
    np.testing.assert_allclose(scale, [math.sqrt(10 / 70), math.sqrt(40 / 70), 1.0])
    boxes = icon_boxes(cells, scale, size, width)
    for (ix, iy), s, (x0, y0, x1, y1) in zip(cells, scale, boxes, strict=True):
        assert x1 - x0 == y1 - y0 == round(100 * s)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        assert abs(cx - (ix + 0.5) * 100) <= 0.5 and abs(cy - (size - iy - 0.5) * 100) <= 0.5
    icons = np.zeros((3, 10, 10, 3), np.uint8)
    drawn = draw_region(boxes, icons, (0, 0, width, width))
    assert (drawn.sum(-1) == 0).sum() == sum(round(100 * s) ** 2 for s in scale)
    assert (density_scale(count, enabled=False) == 1).all()


def test_a_band_reads_exactly_the_cell_rows_its_pixels_meet() -> None:
    for size, width in ((5, 64), (16, 256), (20, 1600), (7, 50)):
        e = edges(size, width)
        for y0 in range(0, width, max(1, width // 13)):
            y1 = min(width, y0 + max(1, width // 9))
            lo, hi = cell_rows_in(size, width, y0, y1)
            rows = [iy for iy in range(size) if e[size - 1 - iy] < y1 and e[size - iy] > y0]
            assert (lo, hi) == (min(rows), max(rows)), (size, width, y0, y1)


@pytest.mark.parametrize(
    "sizes,px", [((20, 40, 80, 160), 80), ((16, 32), 64), ((320,), 80), ((10, 15, 20), 32)]
)
def test_zoom_ranges_switch_level_where_icons_would_grow_past_their_size(sizes, px) -> None:
    levels = zoom_ranges(sizes, px)
    assert [lv.size for lv in levels] == sorted(sizes) and levels[0].zmin == 0
    for a, b in itertools.pairwise(levels):
        assert b.zmin == a.zmax + 1  # contiguous: every zoom shows exactly one level
    for lv in levels[:-1]:
        if lv.zmax > lv.zmin:  # a level shares nothing but its own zooms
            assert 256 * 2**lv.zmax / lv.size <= px  # never drawn larger than rendered
    last = levels[-1]
    assert 256 * 2**last.zmax / last.size >= px  # the finest reaches its rendered size
    assert last.zmax == last.zmin or 256 * 2 ** (last.zmax - 1) / last.size < px


def test_sheet_places_icons_row_major() -> None:
    icons = np.stack([np.full((2, 2, 3), v, np.uint8) for v in range(5)])
    s = sheet(icons, 3, background=255)
    assert s.shape == (4, 6, 3)
    assert s[0, 0, 0] == 0 and s[0, 4, 0] == 2 and s[2, 0, 0] == 3 and s[2, 2, 0] == 4
    assert (s[2:, 4:] == 255).all()


def test_a_lower_zoom_is_the_box_downsampled_zoom_above(tmp_path) -> None:
    """shrink_task: each tile of zoom z from the 2 x 2 tiles of zoom z + 1 (PNG: exact)."""
    from PIL import Image

    from pipelines.stages.compose import Shrink, shrink_task

    rng = np.random.default_rng(4)
    t, out = 8, tmp_path / "tiles" / "16"
    big = rng.integers(0, 256, (4 * t, 4 * t, 3), dtype=np.uint8)  # zoom 2: 4 x 4 tiles
    for x in range(4):
        for y in range(4):
            (out / "2" / str(x)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(big[y * t : (y + 1) * t, x * t : (x + 1) * t]).save(
                out / "2" / str(x) / f"{y}.png"
            )
    loc = RunLocation.of(str(tmp_path))
    assert shrink_task(Shrink(loc, 16, 1, 0, 2, str(out), t, "png"))["tiles"] == 4
    assert shrink_task(Shrink(loc, 16, 0, 0, 1, str(out), t, "png"))["tiles"] == 1
    want1 = np.asarray(Image.fromarray(big).resize((2 * t, 2 * t), Image.Resampling.BOX))
    for x in range(2):
        for y in range(2):
            got = np.asarray(Image.open(out / "1" / str(x) / f"{y}.png"))
            np.testing.assert_array_equal(got, want1[y * t : (y + 1) * t, x * t : (x + 1) * t])
    want0 = np.asarray(Image.fromarray(want1).resize((t, t), Image.Resampling.BOX))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "0" / "0" / "0.png")), want0)
