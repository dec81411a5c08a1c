"""Benchmark the Sprites DataModule: full build, cache load, batch throughput from memory.

Run on purpose (not part of the tests):
    python bench/sprites_data.py [--sheets-dir DIR] [--cache-dir DIR] [--batches 300] [--device cpu]

Without --cache-dir, the build goes to a temporary folder that is deleted afterwards (so the build is
always measured from scratch); with it, an existing cache is reused and the build step is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import torch

os.environ.setdefault("WANDB_MODE", "disabled")

from sdcd.data_modules.sprites import SpritesDataModule  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(dm: SpritesDataModule, device: torch.device, n_batches: int) -> dict:
    """Batches/s through DataLoader + on_after_batch_transfer, the way Lightning feeds a training step."""

    def batches():
        while True:
            for raw in dm.train_dataloader():
                yield {"index": raw["index"].to(device, non_blocking=True), "split": raw["split"]}

    stream = batches()
    for _ in range(5):  # warm-up: moves the table to the device once
        dm.on_after_batch_transfer(next(stream), 0)
    sync(device)
    start = time.perf_counter()
    for _ in range(n_batches):
        batch = dm.on_after_batch_transfer(next(stream), 0)
    sync(device)
    seconds = time.perf_counter() - start
    assert batch["x"].shape == (dm.batch_size, 8, 3, 64, 64)
    return {"batches_per_s": n_batches / seconds, "sequences_per_s": n_batches * dm.batch_size / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets-dir", default=None, help="LPC sheets (default: the DataModule's search)")
    parser.add_argument("--cache-dir", default=None, help="reuse this cache (default: a fresh temp dir)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=300, help="batches timed for the throughput")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON line")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="sdcd-sprites-bench-")
    kw = dict(batch_size=args.batch_size, sheets_dir=args.sheets_dir, cache_dir=cache_dir)
    out = {"device": args.device, "batch_size": args.batch_size, "threads": torch.get_num_threads()}
    try:
        dm = SpritesDataModule(**kw)
        start = time.perf_counter()
        dm.prepare_data()  # builds and writes the cache when it is missing
        dm.setup("fit")
        out["build_s" if args.cache_dir is None else "first_setup_s"] = time.perf_counter() - start
        del dm

        start = time.perf_counter()
        dm = SpritesDataModule(**kw)
        dm.setup("fit")  # reads + verifies (crc32) the cached uint8 arrays
        out["cache_load_s"] = time.perf_counter() - start
        out["cache_bytes"] = sum(f.stat().st_size for f in dm.cache_path.glob("*.npy"))
        out.update(throughput(dm, torch.device(args.device), args.batches))
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_dir, ignore_errors=True)

    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>16}: {value:.3f}" if isinstance(value, float) else f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
