"""The reader's producer thread: it reads ahead of a slow consumer (bounded), keeps rows in
order, gives the same batches as reading inline, raises its errors in the consumer, and stops
when the consumer does."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from atlas_core.data.reader import ImageReader
from atlas_core.models.preprocess import Preprocess
from tests.conftest import make_images

PRE = Preprocess(size=32, crop_pct=1.0)


def _reader(paths: list[Path], decoder: str, **kw) -> ImageReader:
    uris = np.array([str(p) for p in paths], dtype=object)
    return ImageReader(
        uris, np.full((len(paths), 4), -1, np.int32), PRE, decoder=decoder, batch_size=4, **kw
    )


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_reads_ahead_of_a_slow_consumer_and_keeps_the_order(tmp_path: Path, decoder: str) -> None:
    paths = make_images(tmp_path / "imgs", 60, size=48, seed=4)
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"not an image")
    paths = [*paths[:10], tmp_path / "imgs" / "bad.jpg", *paths[10:]]
    inline = _reader(paths, decoder, prefetch=1)
    ref = [(i.copy(), x.clone()) for i, x in inline.batches()]
    r = _reader(paths, decoder, prefetch=3)
    ahead = []
    got = []
    for i, x in r.batches():
        time.sleep(0.25)  # the consumer's forward pass; the producer goes on meanwhile
        ahead.append(int((r.status != 0).sum()) - (len(got) + 1) * 4)
        got.append((i, x))
    assert max(ahead) >= 8  # rows decoded beyond what was consumed: two batches or more
    # bounded: 3 batches queued, one waiting to be queued, a batch of decodes in flight, and the
    # bad row (61 rows in all: reading everything at once would be 57 ahead)
    assert max(ahead) <= 4 * 3 + 4 + 4 + 1
    assert [list(i) for i, _ in got] == [list(i) for i, _ in ref]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, ref, strict=True))
    assert 10 not in np.concatenate([i for i, _ in got]) and r.status[10] != 1  # classified
    assert np.array_equal(r.status, inline.status) and np.array_equal(r.hashes, inline.hashes)


def test_an_error_in_the_producer_is_raised_in_the_consumer(tmp_path: Path, monkeypatch) -> None:
    paths = make_images(tmp_path / "imgs", 12, size=48, seed=5)
    r = _reader(paths, "pil")
    real = r._load

    def flaky(i: int):
        if i == 7:
            raise OSError("the store went away")
        return real(i)

    monkeypatch.setattr(r, "_load", flaky)
    with pytest.raises(OSError, match="went away"):
        list(r.batches())
    assert not [t for t in threading.enumerate() if t.name == "atlas-reader"]


def test_a_consumer_that_stops_early_stops_the_producer(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", 40, size=48, seed=6)
    r = _reader(paths, "pil", prefetch=1)
    for _ in r.batches():
        break
    assert not [t for t in threading.enumerate() if t.name == "atlas-reader"]
    assert int((r.status != 0).sum()) < len(paths)  # it did not read the rest
