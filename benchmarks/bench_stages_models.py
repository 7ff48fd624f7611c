"""Crops per second of our depth and embedding stages against raw library calls on the same batch.

Run: `.venv/bin/python benchmarks/bench_stages_models.py [--crops 16] [--input-size 518] [--repeats 3]`

Offline there are no hub weights: depth runs Depth Anything with the V2-Small layout and seeded random
weights, the embedder RepViT m0.9 with random weights. Speed does not depend on the weight values; the
printed ratios (ours ÷ raw, higher is better, 1.0 = no overhead) are what this measures.

* depth, square crops of different sizes (MINTIME/Megatron crops): ours = `DepthEstimator.predict`
  (processor, grouped batches, per-crop bicubic resize, uint8); raw = one `processor(...,
  return_tensors="pt")` + model call + `post_process_depth_estimation` with each crop's size.
* depth, mixed aspect ratios: the raw batched call cannot stack them, so raw = one call per crop;
  ours batches crops that share a processed shape.
* embed: ours = `Embedder.embed`; raw = timm's transform per image, stack, `forward_features` +
  `forward_head(pre_logits=True)`.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from faceshard.models.depth import DepthEstimator
from faceshard.models.embedders import Embedder


def compare(
    name: str, ours: Callable[[], object], raw: Callable[[], object], n_crops: int, repeats: int
) -> None:
    """Crops per second of the fastest of `repeats` runs of each, interleaved (load on a shared machine
    hits both alike), after one warm-up run each; printed with the ratio ours ÷ raw."""
    ours()
    raw()
    best_ours = best_raw = float("inf")
    for _ in range(repeats):
        best_ours = min(best_ours, _timed(ours))
        best_raw = min(best_raw, _timed(raw))
    ours_rate, raw_rate = n_crops / best_ours, n_crops / best_raw
    print(
        f"{name:<34} ours {ours_rate:8.2f} crops/s   raw {raw_rate:8.2f} crops/s   "
        f"ratio {ours_rate / raw_rate:5.2f}"
    )


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_depth(n_crops: int, input_size: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the random-weights warning, expected here
        estimator = DepthEstimator(input_size=input_size, allow_random=True, batch_size=n_crops)
    model, processor = estimator.model, estimator.processor
    size = {"height": input_size, "width": input_size}

    def raw_batched(crops: list[np.ndarray]) -> object:
        with torch.inference_mode():
            inputs = processor(crops, size=size, return_tensors="pt", input_data_format="channels_last")  # type: ignore[operator]
            outputs = model(**inputs)
            return processor.post_process_depth_estimation(outputs, target_sizes=[c.shape[:2] for c in crops])  # type: ignore[attr-defined]

    square = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in rng.integers(60, 300, n_crops)]
    compare(
        f"depth square crops ({input_size}px)",
        lambda: estimator.predict(square),
        lambda: raw_batched(square),
        n_crops,
        repeats,
    )

    aspects = [(100, 100), (100, 80), (80, 100)]
    mixed = [rng.integers(0, 256, (*aspects[i % 3], 3), dtype=np.uint8) for i in range(n_crops)]
    compare(
        f"depth mixed aspect ({input_size}px)",
        lambda: estimator.predict(mixed),
        lambda: [raw_batched([c]) for c in mixed],
        n_crops,
        repeats,
    )


def bench_embed(n_crops: int, repeats: int) -> None:
    rng = np.random.default_rng(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        embedder = Embedder("repvit_m0_9.dist_300e_in1k", allow_random=True, batch_size=n_crops)
    model, transform = embedder.model, embedder.transform
    crops = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in rng.integers(60, 300, n_crops)]

    def raw() -> object:
        with torch.inference_mode():
            batch = torch.stack([transform(Image.fromarray(c)) for c in crops])
            return model.forward_head(model.forward_features(batch), pre_logits=True).numpy()  # type: ignore[operator]

    compare("embed repvit_m0_9 pooled (224px)", lambda: embedder.embed(crops), raw, n_crops, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, random weights (see docstring)")
    bench_depth(args.crops, args.input_size, args.repeats)
    bench_embed(args.crops, args.repeats)


if __name__ == "__main__":
    main()
