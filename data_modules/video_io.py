"""Video I/O for sdcd.data_modules.video: finding and probing the videos (files and frame folders),
and decoding the frames of planned clips with PyAV (sequential decoding, or a keyframe seek when the
next wanted frame is far; frames identified by their timestamps). Why PyAV: docs/decisions.md."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

VIDEO_EXTENSIONS = tuple(".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .ogv .flv .wmv .3gp .gif".split())
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SKIP_REASONS = ("unreadable", "no_video_stream", "too_short", "not_a_video")


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
