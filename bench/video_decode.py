"""Decode throughput of the streaming video DataModule (run on purpose, not by the tests).

    .venv/bin/python bench/video_decode.py [--videos 8] [--length 240] [--sizes 64 128] [--workers 0 2]

Encodes `--videos` H.264 mp4s of `--length` frames per source size into a temp folder (moving
gradients plus noise, so the codec has real work), then times full passes of the training stream
(clips of `--n-frames` frames, resized/cropped to `--frame-size`) with each `--workers` setting.
`0` decodes in the main process, i.e. the rate of one worker. Prints clips/s and frames/s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import av
import numpy as np

from sdcd.data_modules.video import VideoClipDataModule


def make_video(path: str, n: int, size: int, rng: np.random.Generator) -> None:
    """A `size`x`size` H.264 mp4: a gradient drifting over time plus per-frame noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tmp = path + ".part.mp4"
    with av.open(tmp, "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "veryfast", "crf": "23"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(n):
            phase = t / 25.0
            rgb = np.stack(
                [np.sin(6 * xx + phase), np.cos(5 * yy - phase), np.sin(4 * (xx + yy) + 2 * phase)], -1
            )
            rgb = (rgb * 100 + 128 + rng.normal(0, 12, rgb.shape)).clip(0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


def time_pass(dm: VideoClipDataModule, repeats: int) -> tuple[float, int]:
    """Best seconds of `repeats` passes of the train loader (after a warm-up pass), and clips per pass."""
    loader = dm.train_dataloader()
    best, clips = float("inf"), 0
    for epoch in range(repeats + 1):
        dm.set_epoch(epoch)
        t0 = time.perf_counter()
        clips = sum(int(batch["x"].shape[0]) for batch in loader)
        if epoch > 0:  # the first pass also starts the workers
            best = min(best, time.perf_counter() - t0)
    return best, clips


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--length", type=int, default=240, help="frames per video")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="source video sides")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--n-frames", type=int, default=8)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"cpus={os.cpu_count()} av={av.__version__} ffmpeg={av.library_versions['libavcodec']}")
    print(f"{'source':>8} {'workers':>7} {'clips':>6} {'sec':>7} {'clips/s':>8} {'frames/s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            root = os.path.join(tmp, f"s{size}")
            os.makedirs(root)
            for k in range(args.videos):
                make_video(os.path.join(root, f"v{k:03d}.mp4"), args.length, size, rng)
            for workers in args.workers:
                dm = VideoClipDataModule(
                    root,
                    n_frames=args.n_frames,
                    frame_size=args.frame_size,
                    batch_size=args.batch_size,
                    num_workers=workers,
                    val_fraction=0.0,
                    drop_last=False,
                )
                seconds, clips = time_pass(dm, args.repeats)
                rate = clips / seconds
                fps = rate * args.n_frames
                print(f"{size:>6}px {workers:>7} {clips:>6} {seconds:>7.2f} {rate:>8.0f} {fps:>9.0f}")


if __name__ == "__main__":
    main()
