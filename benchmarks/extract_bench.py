"""Extraction benchmark: our extract stage (Ray tasks, decode threads overlapping the forward pass,
chunked Zarr writes) against a plain single-process loop (PIL decode, torch forward, np.save per
batch) and the bare forward pass on pre-decoded tensors, on the same model and images.
Also: the extraction error against a direct forward pass, scaling from 1 to 2 Ray worker nodes
(``ray.cluster_utils.Cluster`` on this machine), and Zarr write throughput.

    python -m benchmarks.extract_bench [--images 512]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import Timer, report, settings, write

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the local cluster on loopback

log = logging.getLogger("benchmarks.extract")
LAYER = "blocks.4"
BATCH = 64


def _settings(run_dir: str, n: int, chunk: int, address: str | None) -> Any:
    return settings(
        f"run_dir={run_dir}", f"layer={LAYER}", f"data.n_images={n}",
        f"extract.batch_size={BATCH}", f"extract.chunk_images={chunk}",
        f"cluster.address={address or 'null'}", f"cluster.num_cpus={'null' if address else 2}",
    )  # fmt: skip


def ours(n: int, cluster_address: str | None = None, chunk: int = 128) -> tuple[float, str, float]:
    """Images per second of the extract stage end to end (store creation, worker start-up and
    commit markers included), the store's URL, and the steady rate: the median shard's
    images per second times the number of tasks running at once (the CPUs)."""
    from pipelines import extract, ray_ops

    tmp = tempfile.mkdtemp()
    s = _settings(tmp, n, chunk, cluster_address)
    ray_ops.init(s.cluster)
    with Timer() as t:
        res = extract.run(s, "bench")
    parallel = ray_ops.cluster_resources().get("CPU", 1)
    ray_ops.shutdown()
    steady = float(res.details["shard_images_per_second_median"]) * parallel
    return n / t.seconds, s.store_url, steady


def plain_loop(n: int) -> float:
    """The peer: decode with PIL, forward, np.save each batch; one process."""
    from atlas_core.data import decode, photo_crops
    from atlas_core.models import ModelSpec, capture, load_model

    m = load_model(ModelSpec())
    man = photo_crops(n, seed=0, scales=(1.0, 0.6, 0.4, 0.25))
    out = tempfile.mkdtemp()
    with Timer() as t:
        for b in range(0, n, BATCH):
            arrs = [
                m.preprocess.to_array(decode(u, c).image)
                for u, c in zip(man.uris[b : b + BATCH], man.crops[b : b + BATCH], strict=True)
            ]
            with torch.no_grad(), capture(m.module, [LAYER]) as feats:
                m.module(m.preprocess.batch(np.stack(arrs)))
            np.save(os.path.join(out, f"{b}.npy"), feats[LAYER][:, :, 7, 7].numpy())
    return n / t.seconds


def bare_forward(n: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Forward pass only, on tensors decoded beforehand; also returns them for the error check."""
    from atlas_core.data import decode, photo_crops
    from atlas_core.models import ModelSpec, load_model

    m = load_model(ModelSpec())
    man = photo_crops(n, seed=0, scales=(1.0, 0.6, 0.4, 0.25))
    arrs = np.stack(
        [
            m.preprocess.to_array(decode(u, c).image)
            for u, c in zip(man.uris, man.crops, strict=True)
        ]
    )
    xs = [m.preprocess.batch(arrs[b : b + BATCH]) for b in range(0, n, BATCH)]
    with torch.no_grad(), Timer() as t:
        for x in xs:
            m.module(x)
    return n / t.seconds, arrs, man.crops


def extraction_error(store_url: str, arrs: np.ndarray) -> tuple[float, float]:
    """Max abs error of the stored (float16) activations against a direct fp32 forward pass,
    and the same relative to the largest activation (float16 keeps 11 significant bits)."""
    from atlas_core.models import ModelSpec, capture, load_model
    from atlas_core.store import RunStore

    m = load_model(ModelSpec())
    st = RunStore.open(store_url)
    pos = st.positions(0, len(arrs))
    stored = st.acts(LAYER)
    err, peak = 0.0, 0.0
    for b in range(0, len(arrs), BATCH):
        with torch.no_grad(), capture(m.module, [LAYER]) as feats:
            m.module(m.preprocess.batch(arrs[b : b + BATCH]))
        f = feats[LAYER].numpy()
        p = pos[b : b + BATCH]
        ref = f[np.arange(len(p)), :, p[:, 0], p[:, 1]]
        err = max(err, float(np.abs(stored[b : b + BATCH] - ref).max()))
        peak = max(peak, float(np.abs(ref).max()))
    return err, err / peak


def scaling(n: int) -> dict[str, float]:
    """Ours on a real multi-node Ray cluster on this machine: 1 vs 2 worker nodes of 1 CPU."""
    from ray.cluster_utils import Cluster

    out = {}
    for nodes in (1, 2):
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "node_ip_address": "127.0.0.1",
                "include_dashboard": False,
            },
        )
        for _ in range(nodes):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ips, _, steady = ours(n, cluster.address)
        out[f"{nodes}_node"] = round(ips, 2)
        out[f"{nodes}_node_steady"] = round(steady, 2)
        cluster.shutdown()
        time.sleep(1)
    out["speedup_2_vs_1"] = round(out["2_node"] / out["1_node"], 3)
    return out


def zarr_write_mb_s(rows: int = 65536, dim: int = 112, chunk: int = 8192) -> float:
    import zarr

    data = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        a = zarr.create_array(
            str(Path(tmp) / "a.zarr"), shape=data.shape, chunks=(chunk, dim), dtype="float16"
        )
        with Timer() as t:
            for s in range(0, rows, chunk):
                a[s : s + chunk] = data[s : s + chunk]
    return data.nbytes / 1e6 / t.seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--scaling-images", type=int, default=256)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(2)
    n = args.images
    bare, arrs, _ = bare_forward(n)
    loop = plain_loop(n)
    mine, store_url, steady = ours(n)
    err, rel = extraction_error(store_url, arrs)
    report(
        f"extract {n} images",
        mine,
        loop,
        "img/s",
        f"max abs error vs fp32 forward {err:.2e} (relative {rel:.1e})",
    )
    report("vs bare forward", mine, bare, "img/s", "bare = forward only, pre-decoded")
    report("steady state vs bare forward", steady, bare, "img/s", "median shard x tasks at once")
    scale = scaling(args.scaling_images)
    log.info("scaling 1 -> 2 worker nodes: %s", scale)
    zw = zarr_write_mb_s()
    write(
        "extract",
        {
            "model": "efficientnet_lite0",
            "layer": LAYER,
            "images": n,
            "batch": BATCH,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "ours_images_per_second": round(mine, 2),
            "loop_images_per_second": round(loop, 2),
            "bare_forward_images_per_second": round(bare, 2),
            "ratio_vs_loop": round(mine / loop, 3),
            "ratio_vs_bare": round(mine / bare, 3),
            "max_abs_error_fp16_vs_fp32_forward": err,
            "max_relative_error_fp16_vs_fp32_forward": rel,
            "scaling_images_per_second": scale,
            "zarr_write_mb_per_second": round(zw, 1),
            "notes": "ours includes store creation, decoding (2 threads per task), commit markers; "
            "local Ray with 2 CPUs (one task per CPU)",
        },
    )


if __name__ == "__main__":
    main()
