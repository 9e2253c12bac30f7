"""Layouts of small sample sets (class views: a few thousand rows): UMAP or t-SNE, fitted whole.

The article found t-SNE better than UMAP for the sparse sets of a class activation atlas; both
are seeded. ``n_components=1`` gives the 1-D layout of a two-class comparison's y axis.
"""

from __future__ import annotations

import numpy as np


def embed_small(
    x: np.ndarray,
    *,
    method: str = "umap",
    n_components: int = 2,
    n_neighbors: int = 20,
    min_dist: float = 0.01,
    metric: str = "cosine",
    seed: int = 0,
) -> np.ndarray:
    """(n, n_components) float32 layout of ``x`` (n, C); tiny sets get a PCA projection."""
    x = np.asarray(x, np.float32)
    n = len(x)
    if n < 4:
        return _pca(x, n_components)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        tsne = TSNE(
            n_components=n_components,
            metric=metric,
            init="pca",
            random_state=seed,
            perplexity=perplexity,
        )
        return tsne.fit_transform(x).astype(np.float32)
    if method != "umap":
        raise ValueError(f"method must be umap or tsne, not {method!r}")
    import umap

    fit = umap.UMAP(
        n_components=n_components,
        n_neighbors=min(n_neighbors, n - 1),
        min_dist=min_dist,
        metric=metric,
        random_state=seed,
        init="pca",
        n_jobs=1,
    )
    return np.asarray(fit.fit_transform(x), np.float32)


def _pca(x: np.ndarray, k: int) -> np.ndarray:
    c = x - x.mean(axis=0)
    if not c.any():
        return np.zeros((len(x), k), np.float32)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    out = c @ vt[:k].T
    return np.pad(out, ((0, 0), (0, k - out.shape[1]))).astype(np.float32)
