"""What keeps an output the same whatever the machine's core count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block: a sum's rounding then does not depend on
    how many threads split it, so the same inputs give the same bytes on any core count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
