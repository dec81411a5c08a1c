"""Throughput of Moving dSprites label generation and frame rendering.

.venv/bin/python bench/dsprites_render.py                 # CPU, 64×64, batch 64×16
.venv/bin/python bench/dsprites_render.py --device cuda   # on the GPU
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sdcd.data_modules.dsprites import generate_sequences, render_procedural


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="sequences per batch")
    parser.add_argument("--frames", type=int, default=16, help="frames per sequence")
    parser.add_argument("--iters", type=int, default=20, help="timed batches (after 3 warm-up batches)")
    parser.add_argument("--n-labels", type=int, default=100_000, help="sequences for the label timing")
    args = parser.parse_args()
    device = torch.device(args.device)

    for variant in ("cond", "simple"):
        start = time.perf_counter()
        generate_sequences(args.n_labels, variant, args.frames, np.random.default_rng(0))
        print(f"labels {variant:6s}: {args.n_labels} sequences in {time.perf_counter() - start:.3f} s")

    table = torch.from_numpy(generate_sequences(args.batch * (args.iters + 3), "cond", args.frames, 1))
    batches = table.to(device).long().split(args.batch)
    for lab in batches[:3]:
        render_procedural(lab, args.frame_size)
    _sync(device)
    start = time.perf_counter()
    for lab in batches[3:]:
        render_procedural(lab, args.frame_size)
    _sync(device)
    seconds = time.perf_counter() - start
    n_frames = args.iters * args.batch * args.frames
    print(
        f"render {args.frame_size}x{args.frame_size} on {device} ({torch.get_num_threads()} threads), "
        f"batch {args.batch}x{args.frames}: {n_frames / seconds:,.0f} frames/s "
        f"({1000 * seconds / args.iters:.1f} ms/batch)"
    )


if __name__ == "__main__":
    main()
