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

Why PyAV: its wheels bundle FFmpeg (H.264/HEVC/VP8/VP9/AV1/MPEG-4/MJPEG decoders, every common
container), so `pip install` is enough on any OS, and it exposes what this module needs: the
demuxer (packet counts and keyframe timestamps without decoding), keyframe seeking, the decoder's
frame iterator (stop once the last wanted frame is out) and swscale (colour conversion plus
antialiased resize in one C call, with a reusable context). torchvision.io's video readers were
deprecated and are removed in torchvision 0.28 in favour of TorchCodec, which links against an
FFmpeg the user must install and is pinned to torch versions; decord's last release is 0.6.0 (2021);
OpenCV's VideoCapture hides the container (its frame count is a header estimate, frame-accurate
seeking is unreliable) and decodes at full size before any resize.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import av
import numpy as np
import torch
import torch.distributed as dist
from av.video.reformatter import VideoReformatter
from lightning import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sdcd.data_modules.base import Factor

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = tuple(".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .ogv .flv .wmv .3gp .gif".split())
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SKIP_REASONS = ("unreadable", "no_video_stream", "too_short", "not_a_video")
# per-worker counters in shared memory: clips yielded, lost while decoding, repeated to pad (DDP),
# left out of an incomplete last batch (drop_last)
_YIELDED, _FAILED, _PADDED, _DROPPED = range(4)
_MAX_WORKERS = 64


class VideoSkipWarning(UserWarning):
    """A video file, frame folder or clip was skipped."""


@dataclass(frozen=True)
class VideoEntry:
    """One usable video: a file, or a folder of frames (then `frames` lists its image names)."""

    path: str
    rel: str  # path relative to the root, with "/" separators (stable key for the val split)
    n_frames: int
    frames: tuple[str, ...] = ()

    @property
    def is_folder(self) -> bool:
        return bool(self.frames)


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: `f2.png` < `f10.png`."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def clip_span(n_frames: int, frame_skip: int) -> int:
    """Frames a clip covers in its video, from its first to its last frame."""
    return (n_frames - 1) * frame_skip + 1


def n_clips(video_frames: int, span: int, stride: int) -> int:
    return (video_frames - span) // stride + 1 if video_frames >= span else 0


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _probe_file(path: str) -> int:
    """Frame count of a video file from its container; raises _Skip if it is not a usable video."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise _Skip("no_video_stream", "the file has no video stream")
            stream = container.streams.video[0]
            n = stream.frames
            if n <= 0:  # no count in the header (MKV, WebM, ...): count packets, without decoding
                n = sum(
                    1
                    for packet in container.demux(stream)
                    if packet.size and not getattr(packet, "is_discard", False)
                )
            return n
    except _Skip:
        raise
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise _Skip("unreadable", f"could not be opened as a video ({e})") from e


def _probe_folder(path: str, images: list[str]) -> int:
    try:
        with Image.open(os.path.join(path, images[0])) as im:
            _ = im.size  # reads the header only
    except (OSError, ValueError) as e:
        raise _Skip("unreadable", f"its first frame {images[0]} is not a readable image ({e})") from e
    return len(images)


def scan_videos(root: str, span: int, warn: bool = True) -> tuple[list[VideoEntry], dict[str, list[str]]]:
    """Probe every candidate under `root`; return the videos with >= `span` frames and the skipped paths.

    Skipped paths are grouped by reason (`SKIP_REASONS`); each gets one `VideoSkipWarning` if `warn`.
    """
    videos: list[VideoEntry] = []
    skipped: dict[str, list[str]] = {r: [] for r in SKIP_REASONS}

    def skip(path: str, reason: str, detail: str) -> None:
        skipped[reason].append(path)
        if warn:
            warnings.warn(f"Skipping {path}: {detail}.", VideoSkipWarning, stacklevel=3)

    def add(path: str, n: int, frames: tuple[str, ...] = ()) -> None:
        if n < span:
            skip(path, "too_short", f"{n} frames, fewer than the {span} a clip spans")
        else:
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            videos.append(VideoEntry(path, rel, n, frames))

    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key)
        images, files = [], []
        for name in sorted((f for f in filenames if not f.startswith(".")), key=natural_key):
            ext = os.path.splitext(name)[1].lower()
            (images if ext in IMAGE_EXTENSIONS else files).append(name)
        if images:
            try:
                add(dirpath, _probe_folder(dirpath, images), tuple(images))
            except _Skip as s:
                skip(dirpath, s.reason, str(s))
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
                skip(path, "not_a_video", "not a video extension")
                continue
            try:
                add(path, _probe_file(path))
            except _Skip as s:
                skip(path, s.reason, str(s))
    videos.sort(key=lambda v: natural_key(v.rel))
    return videos, skipped


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side = `size` and the aspect ratio kept."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def _crop(frame: np.ndarray, size: int, where) -> np.ndarray:
    """The `size` x `size` window of frame (h, w, 3) at relative position `where` = (y, x) in [0, 1]."""
    h, w = frame.shape[:2]
    y0, x0 = round(where[0] * (h - size)), round(where[1] * (w - size))
    return frame[y0 : y0 + size, x0 : x0 + size]


class _MissingFrames(Exception):
    """The decoder did not deliver a frame the index promised."""


# seek to a keyframe when that skips decoding at least this many frames (shard starts, big strides)
_SEEK_GAIN = 48
_REORDER = 32  # packets demuxed past the last wanted frame: covers B-frame reordering


def _read_frames(
    video: VideoEntry, wanted: np.ndarray, size: int, threads: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, frame (h, w, 3) uint8 resized so the shorter side is `size`) for sorted `wanted`."""
    if video.is_folder:
        for i in wanted.tolist():
            with Image.open(os.path.join(video.path, video.frames[i])) as im:
                w, h = _resized_size(*im.size, size)
                im.draft("RGB", (w, h))  # JPEG: decode at a reduced scale when possible
                yield i, np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
        return
    far = int(np.diff(wanted, prepend=-1).max()) > _SEEK_GAIN
    timeline = _frame_timeline(video.path, int(wanted[-1])) if far else None
    with av.open(video.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        reformatter = VideoReformatter()  # one per video: keeps its swscale context (4x faster per frame)

        def rgb(frame: av.VideoFrame) -> np.ndarray:
            w, h = _resized_size(frame.width, frame.height, size)
            return reformatter.reformat(
                frame, width=w, height=h, format="rgb24", interpolation="AREA"
            ).to_ndarray()

        if timeline is None:
            yield from _decode_sequential(container, stream, wanted, rgb)
        else:
            yield from _decode_seeking(container, stream, wanted, rgb, *timeline)


def _decode_sequential(
    container, stream, wanted: np.ndarray, rgb: Callable
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode from the first frame, counting frames, up to the last wanted one."""
    last = int(wanted[-1])
    mask = np.zeros(last + 1, dtype=bool)
    mask[wanted] = True
    for i, frame in enumerate(container.decode(stream)):
        if mask[i]:
            yield i, rgb(frame)
        if i >= last:
            return
    raise _MissingFrames(f"the video ended before frame {last}")


def _frame_timeline(path: str, last: int) -> tuple[np.ndarray, np.ndarray] | None:
    """pts of the frames in presentation order (at least up to `last`), and for each frame the index of
    the latest keyframe at or before it; from the demuxer alone. None if pts are missing or repeat."""
    pts, key = [], []
    with av.open(path) as container:
        for packet in container.demux(container.streams.video[0]):
            if not packet.size or getattr(packet, "is_discard", False):  # EOS flush; cut by an edit list
                continue
            if packet.pts is None:
                return None
            pts.append(packet.pts)
            key.append(packet.is_keyframe)
            if len(pts) > last + _REORDER:
                break
    order = np.argsort(pts, kind="stable")
    pts_sorted, key_sorted = np.asarray(pts, dtype=np.int64)[order], np.asarray(key, dtype=bool)[order]
    if len(pts_sorted) <= last or (np.diff(pts_sorted) == 0).any():
        return None
    key_at = np.maximum.accumulate(np.where(key_sorted, np.arange(len(pts_sorted)), 0))
    return pts_sorted, key_at


def _decode_seeking(
    container, stream, wanted: np.ndarray, rgb: Callable, pts: np.ndarray, key_at: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the wanted frames, jumping to the keyframe before the next one when that saves work.

    Frames are identified by their pts (same indices as sequential counting, variable frame rate too).
    """
    index_of = {p: i for i, p in enumerate(pts.tolist())}
    pos, i, frames = -1, 0, None  # pos: index of the last frame decoded
    sought = -1  # keyframe of the last seek: never seek to it twice (if the demuxer lands early)

    def worth_seeking() -> bool:
        key = int(key_at[wanted[i]])
        return key > pos + _SEEK_GAIN and key != sought

    while i < len(wanted):
        if frames is None or worth_seeking():
            if worth_seeking():
                sought = int(key_at[wanted[i]])
                container.seek(int(pts[sought]), stream=stream, backward=True, any_frame=False)
            frames = container.decode(stream)
        for frame in frames:
            idx = index_of.get(frame.pts, -1)
            if idx <= pos:  # leading frames of an open GOP, or not in the index
                continue
            pos = idx
            if idx > wanted[i]:
                raise _MissingFrames(f"frame {int(wanted[i])} was not decoded")
            if idx == wanted[i]:
                yield idx, rgb(frame)
                i += 1
                if i == len(wanted):
                    return
            if worth_seeking():
                break  # the next wanted frame is far: seek instead of decoding up to it
        else:
            raise _MissingFrames(f"the video ended before frame {int(wanted[i])}")


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
        videos: Sequence[VideoEntry],
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
        span = clip_span(n_frames, frame_skip)
        self.clip_counts = np.array([n_clips(v.n_frames, span, stride) for v in self.videos], dtype=np.int64)
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

    def clip_source(self, index: int) -> tuple[VideoEntry, int]:
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
                for i, frame in _read_frames(video, np.unique(frame_ids), s, self.decode_threads):
                    cache[i] = frame
                    while done < len(run_c) and frame_ids[done, -1] <= i:  # clip `done` is complete
                        # one relative window per clip (frames of a folder may differ in size)
                        where = rng.random(2) if self.random_crop else (0.5, 0.5)
                        out = np.stack([_crop(cache[j], s, where) for j in frame_ids[done].tolist()])
                        yield int(self.clip_offsets[v] + run_c[done]), v, int(frame_ids[done, 0]), out
                        done += 1
                        first_needed = frame_ids[done, 0] if done < len(run_c) else i + 1
                        for j in [j for j in cache if j < first_needed]:
                            del cache[j]
            except (
                av.error.FFmpegError,
                OSError,
                SyntaxError,
                _MissingFrames,
            ) as e:  # PIL: OSError, SyntaxError
                lost = len(run_c) - done
                counters[_FAILED] += lost
                warnings.warn(
                    f"Skipping {lost} clip(s) of {video.path}: decoding failed ({e}).",
                    VideoSkipWarning,
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
        self.span = clip_span(n_frames, frame_skip)
        self._epoch = 0
        self._videos: dict[str, list[VideoEntry]] | None = None
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
                f"({', '.join(VIDEO_EXTENSIONS)}) and/or folders of frames"
            )
        videos, self.skipped = scan_videos(self.root, self.span, warn=_rank_world()[0] == 0)
        if not videos:
            skipped = ", ".join(f"{r}: {len(p)}" for r, p in self.skipped.items() if p) or "nothing found"
            raise ValueError(
                f"data.root={self.root!r} has no usable clip: expected video files "
                f"({', '.join(VIDEO_EXTENSIONS)}) or folders of {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} "
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

    def videos(self, split: str) -> list[VideoEntry]:
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
        counts = np.array([n_clips(v.n_frames, self.span, self.stride) for v in self.videos(split)])
        if not 0 <= index < counts.sum():
            raise IndexError(f"clip id {index} out of range for the {counts.sum()} clips of split {split!r}")
        v = int(np.searchsorted(np.cumsum(counts), index, side="right"))
        return self.videos(split)[v].path, int(index - (np.cumsum(counts)[v] - counts[v])) * self.stride
