"""Streaming clips of T frames from a folder of the user's own (unlabelled) videos.

Input: `root`, searched recursively (hidden entries are ignored). Each video file (extensions in
`VIDEO_EXTENSIONS`) is one video; each folder that holds image files (`IMAGE_EXTENSIONS`) is one
video whose frames are those images in natural order (`frame_2.png` before `frame_10.png`).

Index (once, at `setup`, kept in memory): every candidate is probed cheaply — a container's header
frame count, or a packet count (demux only, no decode) for containers such as MKV/WebM whose header
has none; the file listing and the first image's header for a frame folder. A video of n frames gives
clips starting at 0, stride, 2·stride, ... as long as the clip's span (T−1)·frame_skip + 1 fits.

Stream (`VideoClipDataset`, an `IterableDataset`): each epoch, every process computes the same plan
from (seed, epoch): the videos in a random order, each video's clips in temporal order. The plan is
cut into one contiguous part per DDP rank (equal sizes: at most world_size−1 clips sit out an epoch,
so every rank takes the same number of steps), and each rank's part into contiguous runs of whole
batches, one per DataLoader worker. So no clip is seen twice in an epoch, every worker reads each of
its videos in one forward pass, and the DataLoader's round-robin over workers yields exactly
`len(loader)` batches. Only the frames of planned clips are converted (colour + resize); decoding
starts at the first frame, or, when the next wanted frame is far (a part starting mid-video, a
stride much larger than a clip), jumps to the keyframe before it — frames are then identified by
their timestamps, from a demux-only pass, so indices match a plain count (variable frame rate too).
Decoded clips go through a shuffle buffer (`shuffle_buffer` clips, per worker) before being batched;
make it larger than the typical number of clips per video, or batches hold clips of few videos.

Epochs: the DataLoader is a small subclass whose `__iter__` sets the dataset's epoch (from
`trainer.current_epoch` when a Trainer is attached, else from `VideoClipDataModule.set_epoch`) in a
shared-memory tensor before any worker starts its epoch. That works with persistent workers, with
`reload_dataloaders_every_n_epochs` (not needed) and when resuming from a checkpoint. Given seed,
epoch, world size and num_workers, the clips and their order are deterministic.

Bad input: a file that cannot be opened, has no video stream, is not a video (other extension) or is
shorter than one clip is skipped at setup with one warning each (`VideoSkipWarning`) and counted.
A file that passes the probe but fails while decoding (truncated, corrupt packets) loses the clips it
could not deliver: one warning per video, counted in shared memory per worker, so the end-of-epoch
summary (`VideoClipDataset.summary`, logged at INFO, or WARNING when decoding failed) adds up the
probe skips and every worker's counts: planned + padded = yielded + failed + dropped. Under DDP the
lost clips are replaced by repeats of earlier clips (`padded`) so that ranks keep equal step counts.

Batch: `x` leaves the workers as uint8 (B, T, 3, H, W) — 4× less to copy between processes and to
the GPU — and `on_after_batch_transfer` turns it into float32 in [0, 1] on the device (the batch
contract of `base.py`). Also `index` (B,) clip id within the split (`clip_source` maps it back to a
file and frame), `video` (B,) and `start` (B,) and `split`. No `labels`: `factors = ()`.

Why PyAV: docs/decisions.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import av
import numpy as np
import torch
import torch.distributed as dist
from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sdcd.data_modules import video_io as vio
from sdcd.data_modules.base import Factor

log = logging.getLogger(__name__)

# per-worker counters in shared memory: clips yielded, lost while decoding, repeated to pad (DDP),
# left out of an incomplete last batch (drop_last)
_YIELDED, _FAILED, _PADDED, _DROPPED = range(4)
_MAX_WORKERS = 64


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class VideoClipDataset(IterableDataset):
    """Streams batches of clips from `videos` (see the module docstring for the sharding and epochs).

    Yields dicts: `x` (B, T, 3, S, S) uint8, `index`/`video`/`start` (B,) int64, `split` str. Use it
    with `DataLoader(dataset, batch_size=None, ...)`; `len()` is this rank's number of batches.

    Args:
        videos: the videos of this split.
        n_frames: frames per clip T.
        frame_size: side S of the square output frames.
        stride: frames between the starts of consecutive clips of a video.
        frame_skip: step between the frames of a clip.
        batch_size: clips per batch.
        split: name put in the batches ("train", "val", ...).
        shuffle: visit videos in a random order each epoch and shuffle clips through the buffer.
        shuffle_buffer: clips held per worker for shuffling (0 or 1: no buffer).
        random_crop: crop at a random position (same for all frames of a clip), else centred.
        drop_last: drop the last incomplete batch.
        seed: base seed of the video order, the buffer and the crops.
        rank: DDP rank; default from torch.distributed (0 when not initialised).
        world_size: DDP world size; default from torch.distributed (1 when not initialised).
        decode_threads: FFmpeg threads per decoder (0: FFmpeg decides).
        probe_skipped: counts of files skipped at indexing, reported in the epoch summary.
    """

    def __init__(
        self,
        videos: Sequence[vio.VideoEntry],
        n_frames: int,
        frame_size: int,
        stride: int,
        frame_skip: int = 1,
        batch_size: int = 32,
        split: str = "train",
        shuffle: bool = False,
        shuffle_buffer: int = 0,
        random_crop: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        decode_threads: int = 1,
        probe_skipped: dict[str, int] | None = None,
    ):
        super().__init__()
        if (rank is None) != (world_size is None):
            raise ValueError("pass both rank and world_size, or neither (then torch.distributed decides)")
        if rank is None:
            rank, world_size = _rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.videos = list(videos)
        self.n_frames, self.frame_size = n_frames, frame_size
        self.stride, self.frame_skip = stride, frame_skip
        self.batch_size, self.split, self.shuffle = batch_size, split, shuffle
        self.shuffle_buffer, self.random_crop, self.drop_last = shuffle_buffer, random_crop, drop_last
        self.seed, self.rank, self.world_size, self.decode_threads = seed, rank, world_size, decode_threads
        self.probe_skipped = dict(probe_skipped or {})
        span = vio.clip_span(n_frames, frame_skip)
        self.clip_counts = np.array([vio.n_clips(v.n_frames, span, stride) for v in self.videos], dtype=np.int64)
        self.clip_offsets = np.cumsum(self.clip_counts) - self.clip_counts  # first clip id of each video
        self.n_clips = int(self.clip_counts.sum())
        self.clips_per_rank = self.n_clips // world_size  # equal on all ranks: equal step counts
        # shared with the workers (also persistent ones): the epoch, and their counters
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._counters = torch.zeros(_MAX_WORKERS, 4, dtype=torch.int64).share_memory_()

    # -- epochs ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch and reset the counters; call before iterating (the loader's `__iter__` does)."""
        self._epoch.fill_(int(epoch))
        self._counters.zero_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        n = self.clips_per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def clip_source(self, index: int) -> tuple[vio.VideoEntry, int]:
        """(video, first frame) of clip id `index`."""
        if not 0 <= index < self.n_clips:
            raise IndexError(f"clip id {index} out of range for {self.n_clips} clips")
        v = int(np.searchsorted(self.clip_offsets, index, side="right")) - 1
        return self.videos[v], int(index - self.clip_offsets[v]) * self.stride

    # -- planning (identical in every process) -------------------------------------------------
    def _plan(self, epoch: int, worker: int, n_workers: int) -> tuple[np.ndarray, np.ndarray]:
        """(video, clip number) arrays of the clips this worker of this rank reads, in order."""
        order = np.arange(len(self.videos))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        counts = self.clip_counts[order]
        vids = np.repeat(order, counts)
        clip = np.arange(self.n_clips) - np.repeat(np.cumsum(counts) - counts, counts)
        lo = self.rank * self.clips_per_rank
        vids, clip = vids[lo : lo + self.clips_per_rank], clip[lo : lo + self.clips_per_rank]
        # contiguous runs of whole batches per worker: batches never straddle workers
        n_batches = math.ceil(len(vids) / self.batch_size)
        b0, b1 = worker * n_batches // n_workers, (worker + 1) * n_batches // n_workers
        mine = slice(b0 * self.batch_size, b1 * self.batch_size)
        return vids[mine], clip[mine]

    # -- streaming ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if n_workers > _MAX_WORKERS:
            raise ValueError(f"num_workers={n_workers} is more than the {_MAX_WORKERS} supported")
        epoch = self.epoch
        vids, clip = self._plan(epoch, worker, n_workers)
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker, _stable_hash(self.split)])
        counters = self._counters[worker]
        clips = self._decode(vids, clip, rng, counters)
        if self.shuffle and self.shuffle_buffer > 1:
            clips = _shuffled(clips, self.shuffle_buffer, rng)
        batch: list[tuple[int, int, int, np.ndarray]] = []
        n_seen, last = 0, None
        for item in clips:
            batch.append(item)
            n_seen, last = n_seen + 1, item
            if len(batch) == self.batch_size:
                yield self._collate(batch, counters)
                batch = []
        # under DDP, repeat a clip in place of each lost one so every rank takes the same number of steps
        while self.world_size > 1 and last is not None and n_seen < len(vids):
            batch.append(last)
            n_seen += 1
            counters[_PADDED] += 1
            if len(batch) == self.batch_size:
                yield self._collate(batch, counters)
                batch = []
        if batch and self.drop_last:
            counters[_DROPPED] += len(batch)
        elif batch:
            yield self._collate(batch, counters)

    def _collate(self, items: list[tuple[int, int, int, np.ndarray]], counters: torch.Tensor) -> dict:
        counters[_YIELDED] += len(items)
        ids, vids, starts, arrays = zip(*items, strict=True)
        x = torch.from_numpy(np.stack(arrays))  # (B, T, H, W, 3)
        x = x.permute(0, 1, 4, 2, 3).contiguous()  # (B, T, 3, H, W)
        return {
            "x": x,
            "index": torch.tensor(ids, dtype=torch.int64),
            "video": torch.tensor(vids, dtype=torch.int64),
            "start": torch.tensor(starts, dtype=torch.int64),
            "split": self.split,
        }

    def _decode(
        self, vids: np.ndarray, clip: np.ndarray, rng: np.random.Generator, counters: torch.Tensor
    ) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """Yield (clip id, video, start, clip (T, S, S, 3) uint8), reading each video of the plan once."""
        s, offsets = self.frame_size, np.arange(self.n_frames) * self.frame_skip
        bounds = np.flatnonzero(np.diff(vids)) + 1
        for run_v, run_c in zip(np.split(vids, bounds), np.split(clip, bounds), strict=True):
            if not len(run_v):
                continue
            v = int(run_v[0])
            video = self.videos[v]
            frame_ids = run_c[:, None] * self.stride + offsets  # (C, T) frames of each clip
            cache: dict[int, np.ndarray] = {}
            done = 0
            try:
                for i, frame in vio._read_frames(video, np.unique(frame_ids), s, self.decode_threads):
                    cache[i] = frame
                    while done < len(run_c) and frame_ids[done, -1] <= i:  # clip `done` is complete
                        # one relative window per clip (frames of a folder may differ in size)
                        where = rng.random(2) if self.random_crop else (0.5, 0.5)
                        out = np.stack([vio._crop(cache[j], s, where) for j in frame_ids[done].tolist()])
                        yield int(self.clip_offsets[v] + run_c[done]), v, int(frame_ids[done, 0]), out
                        done += 1
                        first_needed = frame_ids[done, 0] if done < len(run_c) else i + 1
                        for j in [j for j in cache if j < first_needed]:
                            del cache[j]
            except (
                av.error.FFmpegError,
                OSError,
                SyntaxError,
                vio._MissingFrames,
            ) as e:  # PIL: OSError, SyntaxError
                lost = len(run_c) - done
                counters[_FAILED] += lost
                warnings.warn(
                    f"Skipping {lost} clip(s) of {video.path}: decoding failed ({e}).",
                    vio.VideoSkipWarning,
                    stacklevel=2,
                )

    # -- summary -------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Counts of the epoch so far (all workers of this process) and of the indexing skips."""
        totals = self._counters.sum(0).tolist()
        return {
            "split": self.split,
            "epoch": self.epoch,
            "rank": self.rank,
            "clips_planned": self.clips_per_rank,
            "clips_yielded": totals[_YIELDED],
            "clips_failed": totals[_FAILED],
            "clips_padded": totals[_PADDED],
            "clips_dropped": totals[_DROPPED],
            **{f"files_{reason}": n for reason, n in self.probe_skipped.items()},
        }

    def log_summary(self) -> dict:
        s = self.summary()
        # the probe's skips were warned about at setup: only this epoch's decode failures warn again
        log.log(
            logging.WARNING if s["clips_failed"] else logging.INFO,
            "video %s epoch %d (rank %d): %s",
            s["split"],
            s["epoch"],
            s["rank"],
            ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("split", "epoch", "rank")),
        )
        return s


def _stable_hash(text: str) -> int:
    """A stable (not per-process salted like hash()) integer for a string."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def _shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Shuffle a stream through a buffer of `size` items."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = int(rng.integers(size))
        yield buffer[k]
        buffer[k] = item
    for k in rng.permutation(len(buffer)).tolist():
        yield buffer[k]


class _StreamLoader(DataLoader):
    """A DataLoader that sets the dataset's epoch before each pass and logs a summary after it."""

    def __init__(self, dataset: VideoClipDataset, epoch_fn: Callable[[], int], **kwargs):
        super().__init__(dataset, batch_size=None, **kwargs)
        self.epoch_fn = epoch_fn
        self.last_summary: dict | None = None

    def __iter__(self):
        self.dataset.set_epoch(self.epoch_fn())  # before the workers (re)start their epoch
        return self._summarised(super().__iter__())

    def _summarised(self, batches):
        yield from batches
        self.last_summary = self.dataset.log_summary()  # all workers are done: their counters are final


class VideoClipDataModule(LightningDataModule):
    """Clips of T frames from a folder of unlabelled videos and/or frame folders, streamed from disk.

    Val/test: a held-out set of whole *videos* (a `val_fraction` of them, chosen by a hash of their
    path relative to `root` and `seed`, so adding videos rarely moves others between splits); val and
    test use the same videos, all clips in order, centre-cropped. Predict streams every usable video.
    See the module docstring for indexing, sharding, epochs and skipped files.

    Args:
        root: Folder with video files (mp4, webm, avi, mkv, mov, ...) and/or subfolders of frames (PNG/JPG,
            one subfolder per video, natural order), searched recursively.
        n_frames: Frames per clip T.
        frame_size: Side H = W of the output frames: the shorter side is resized to it, then the frame is
            cropped to a square.
        stride: Frames between the starts of consecutive clips of a video; default n_frames * frame_skip
            (non-overlapping clips).
        frame_skip: Step between the frames of a clip (2: every other frame).
        batch_size: Clips per batch (per device).
        num_workers: DataLoader worker processes per split (persistent); 0 decodes in the main process.
        shuffle_buffer: Decoded clips each training worker holds to shuffle its stream (0: no buffer).
        seed: Seed of the video order, the shuffle buffer, the random crops and the val split.
        val_fraction: Fraction of the videos held out for validation and test (at least one video when
            > 0); 0 disables validation.
        random_crop: Train only: crop at a random position along the longer side instead of the centre
            (same window for all frames of a clip; no effect on square videos).
        drop_last: Train only: drop the last incomplete batch.
    """

    n_channels = 3
    factors: tuple[Factor, ...] = ()
    splits = ("train", "val", "test")

    def __init__(
        self,
        root: str,
        n_frames: int = 8,
        frame_size: int = 64,
        stride: int | None = None,
        frame_skip: int = 1,
        batch_size: int = 32,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        seed: int = 0,
        val_fraction: float = 0.1,
        random_crop: bool = False,
        drop_last: bool = True,
    ):
        super().__init__()
        for name, value, low in [
            ("n_frames", n_frames, 1),
            ("frame_size", frame_size, 1),
            ("frame_skip", frame_skip, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("shuffle_buffer", shuffle_buffer, 0),
            ("seed", seed, 0),
        ]:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"data.{name} must be an integer >= {low}, got {value!r}")
        if stride is not None and (not isinstance(stride, int) or stride < 1):
            raise ValueError(f"data.stride must be a positive integer or None, got {stride!r}")
        if num_workers > _MAX_WORKERS:
            raise ValueError(f"data.num_workers must be at most {_MAX_WORKERS}, got {num_workers}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.root = str(root)
        self.n_frames, self.frame_size, self.frame_skip = n_frames, frame_size, frame_skip
        self.stride = stride if stride is not None else n_frames * frame_skip
        self.batch_size, self.num_workers, self.shuffle_buffer = batch_size, num_workers, shuffle_buffer
        self.seed, self.val_fraction = seed, val_fraction
        self.random_crop, self.drop_last = random_crop, drop_last
        self.span = vio.clip_span(n_frames, frame_skip)
        self._epoch = 0
        self._videos: dict[str, list[vio.VideoEntry]] | None = None
        self.skipped: dict[str, list[str]] = {}

    @property
    def static_factors(self) -> list[Factor]:
        return []

    @property
    def dynamic_factors(self) -> list[Factor]:
        return []

    # -- index -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._videos is not None:
            return
        if not os.path.isdir(self.root):
            raise FileNotFoundError(
                f"data.root={self.root!r} is not a folder; expected a folder of video files "
                f"({', '.join(vio.VIDEO_EXTENSIONS)}) and/or folders of frames"
            )
        videos, self.skipped = vio.scan_videos(self.root, self.span, warn=_rank_world()[0] == 0)
        if not videos:
            skipped = ", ".join(f"{r}: {len(p)}" for r, p in self.skipped.items() if p) or "nothing found"
            raise ValueError(
                f"data.root={self.root!r} has no usable clip: expected video files "
                f"({', '.join(vio.VIDEO_EXTENSIONS)}) or folders of {'/'.join(e[1:] for e in vio.IMAGE_EXTENSIONS)} "
                f"frames, with at least {self.span} frames each (n_frames={self.n_frames}, "
                f"frame_skip={self.frame_skip}); skipped: {skipped}"
            )
        # hold out the videos with the smallest hash of (seed, relative path)
        n_val = max(1, round(self.val_fraction * len(videos))) if self.val_fraction > 0 else 0
        if n_val >= len(videos):
            raise ValueError(
                f"data.val_fraction={self.val_fraction} holds out {n_val} of the {len(videos)} usable "
                f"videos in {self.root!r}, leaving none to train on; add videos or lower it"
            )
        ranked = sorted(range(len(videos)), key=lambda i: _stable_hash(f"{self.seed}:{videos[i].rel}"))
        held = set(ranked[:n_val])
        val = [v for i, v in enumerate(videos) if i in held]
        self._videos = {
            "train": [v for i, v in enumerate(videos) if i not in held],
            "val": val,
            "test": val,
            "predict": videos,
        }

    def videos(self, split: str) -> list[vio.VideoEntry]:
        """The usable videos of `split` ("train", "val", "test" or "predict": all of them)."""
        self.setup()
        if split not in self._videos:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(self._videos)}")
        return self._videos[split]

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the training stream without a Trainer (with one, `trainer.current_epoch` wins)."""
        self._epoch = int(epoch)

    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else self._epoch

    # -- loaders -----------------------------------------------------------------------------------
    def dataset(self, split: str, rank: int | None = None, world_size: int | None = None) -> VideoClipDataset:
        """The stream of `split` for a DDP rank (default: from torch.distributed); shuffled only for train."""
        train = split == "train"
        return VideoClipDataset(
            self.videos(split),
            self.n_frames,
            self.frame_size,
            self.stride,
            self.frame_skip,
            self.batch_size,
            split=split,
            shuffle=train,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            random_crop=self.random_crop and train,
            drop_last=self.drop_last and train,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            decode_threads=1 if self.num_workers > 0 else 0,  # parallelism comes from the workers
            probe_skipped={r: len(p) for r, p in self.skipped.items()},
        )

    def _loader(self, split: str) -> DataLoader:
        ds = self.dataset(split)
        if split == "train" and len(ds) == 0:
            raise ValueError(
                f"the training split gives no batch: {ds.n_clips} clips over {ds.world_size} device(s) is "
                f"{ds.clips_per_rank} per device, with data.batch_size={self.batch_size} and "
                f"data.drop_last={self.drop_last}; add videos or lower the batch size"
            )
        return _StreamLoader(
            ds,
            self._current_epoch if split == "train" else (lambda: 0),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if self.videos("val") else []

    def test_dataloader(self) -> DataLoader:
        if not self.videos("test"):
            raise ValueError("data.val_fraction=0 holds out no videos, so there is no test set; set it > 0")
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # uint8 -> float in [0, 1] on the device (after the 4x cheaper uint8 copy)
        if (
            isinstance(batch, dict)
            and isinstance(batch.get("x"), torch.Tensor)
            and batch["x"].dtype == torch.uint8
        ):
            batch = {**batch, "x": batch["x"].float().div_(255)}
        return batch

    def clip_source(self, split: str, index: int) -> tuple[str, int]:
        """(path, first frame index) of clip id `index` of `split` (batch["index"])."""
        counts = np.array([vio.n_clips(v.n_frames, self.span, self.stride) for v in self.videos(split)])
        if not 0 <= index < counts.sum():
            raise IndexError(f"clip id {index} out of range for the {counts.sum()} clips of split {split!r}")
        v = int(np.searchsorted(np.cumsum(counts), index, side="right"))
        return self.videos(split)[v].path, int(index - (np.cumsum(counts)[v] - counts[v])) * self.stride
