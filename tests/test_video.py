"""Streaming video-clip DataModule: contents, sharding, determinism, bad files, Lightning integration.

Test videos are generated here: grey frames whose left half has level 8·(i mod 32) + 4 and right
half 8·(i div 32) + 4 for frame i, which survives lossy codecs (no chroma, smooth halves); PNG frame
folders are lossless, so they carry i in red only and a horizontal ramp in green to locate crops.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pytest
import torch
from helpers.data_files import write_video
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from PIL import Image
from torch.utils.data import DataLoader

from sdcd.data_modules import video_io
from sdcd.data_modules.video import VideoClipDataModule
from sdcd.data_modules.video_io import VideoSkipWarning

os.environ.setdefault("WANDB_MODE", "disabled")


def write_frames(folder, n: int, width: int = 32, height: int = 32, names: str = "f{}.png"):
    """PNG frames: red = 8·i + 4 (frame i), green = 4·column (a ramp to locate crops), blue = 0."""
    os.makedirs(folder)
    ramp = np.broadcast_to(4 * np.arange(width, dtype=np.uint8), (height, width))
    for i in range(n):
        rgb = np.stack(
            [np.full((height, width), 8 * i + 4, np.uint8), ramp, np.zeros((height, width), np.uint8)], -1
        )
        Image.fromarray(rgb).save(os.path.join(folder, names.format(i)))


def frame_index(x: torch.Tensor, png: bool = False) -> np.ndarray:
    """Frame indices encoded in clips x: (B, T, 3, H, W) uint8 -> (B, T)."""
    if png:  # red level
        return np.rint((x[:, :, 0].float().mean((-1, -2)).numpy() - 4) / 8).astype(int)
    quarter = x.shape[-1] // 4  # left and right quarters: away from the edge between the halves
    lo = x[:, :, 0, :, :quarter].float().mean((-1, -2)).numpy()
    hi = x[:, :, 0, :, -quarter:].float().mean((-1, -2)).numpy()
    return np.rint((lo - 4) / 8).astype(int) + 32 * np.rint((hi - 4) / 8).astype(int)


def run(loader) -> tuple[np.ndarray, list[dict]]:
    """All clip ids of one pass, in order, and the batches."""
    batches = list(loader)
    ids = np.concatenate([b["index"].numpy() for b in batches]) if batches else np.zeros(0, int)
    return ids, batches


def make_dm(root, **kwargs) -> VideoClipDataModule:
    kwargs = {
        "n_frames": 2,
        "frame_size": 16,
        "batch_size": 4,
        "num_workers": 0,
        "val_fraction": 0.0,
        **kwargs,
    }
    dm = VideoClipDataModule(str(root), **kwargs)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    """Six mp4s of different lengths: 2-frame clips, stride 2 -> 10+11+12+13+14+15 = 75 clips."""
    root = tmp_path_factory.mktemp("mixed")
    for k in range(6):
        write_video(root / f"v{k}.mp4", 20 + 2 * k)
    return root


@pytest.fixture(scope="module")
def even_root(tmp_path_factory):
    """Five mp4s: 10+11+12+13+14 = 60 clips of 2 frames."""
    root = tmp_path_factory.mktemp("even")
    for k in range(5):
        write_video(root / f"v{k}.mp4", 20 + 2 * k)
    return root


# -- contents ----------------------------------------------------------------------------------------
def test_clip_contents_follow_frame_skip_and_stride_across_containers(tmp_path):
    lengths = {"a.mp4": 25, "b.webm": 22, "c.avi": 30, "d.mkv": 19}
    codecs = {"a.mp4": "libx264", "b.webm": "libvpx", "c.avi": "mjpeg", "d.mkv": "libx264"}
    for name, n in lengths.items():
        write_video(tmp_path / name, n, codec=codecs[name])
    dm = make_dm(tmp_path, n_frames=4, frame_skip=2, stride=3, batch_size=5)
    span = 7
    assert {v.rel: v.n_frames for v in dm.videos("predict")} == lengths  # webm/mkv: counted packets
    ids, batches = run(dm.predict_dataloader())
    got = {
        (dm.videos("predict")[int(v)].rel, int(s))
        for b in batches
        for v, s in zip(b["video"], b["start"], strict=True)
    }
    expected = {(name, s) for name, n in lengths.items() for s in range(0, n - span + 1, 3)}
    assert got == expected and len(ids) == len(expected) == len(set(ids.tolist()))
    for b in batches:
        # each clip holds frames start, start+2, start+4, start+6, in this order
        np.testing.assert_array_equal(frame_index(b["x"]), b["start"].numpy()[:, None] + 2 * np.arange(4))
    for i in ids.tolist():  # clip ids map back to their file and first frame
        path, start = dm.clip_source("predict", i)
        assert (os.path.basename(path), start) in expected


def test_batch_shape_dtype_range_after_transfer(tmp_path):
    write_video(tmp_path / "wide.mp4", 20, width=48, height=32)
    dm = make_dm(tmp_path, n_frames=3, frame_size=16, batch_size=2, drop_last=True)
    assert (dm.n_channels, dm.n_frames, dm.frame_size, dm.factors) == (3, 3, 16, ())
    loader = dm.train_dataloader()
    raw = next(iter(loader))
    assert raw["x"].shape == (2, 3, 3, 16, 16) and raw["x"].dtype == torch.uint8
    batch = dm.on_after_batch_transfer(raw, 0)
    x = batch["x"]
    assert x.shape == (2, 3, 3, 16, 16) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert batch["split"] == "train" and "labels" not in batch
    assert len(loader) == 6 // 2  # 20 frames -> 6 clips of 3


def test_frame_folders_natural_order_and_centre_crop(tmp_path):
    # unpadded names: plain string sort would put f10 before f2
    write_frames(tmp_path / "clipA", 12, width=48, height=24)
    write_frames(tmp_path / "clipB", 9, width=48, height=24, names="img_{}.png")
    dm = make_dm(tmp_path, n_frames=3, frame_size=12, stride=1, batch_size=64)
    assert [(v.rel, v.n_frames) for v in dm.videos("predict")] == [("clipA", 12), ("clipB", 9)]
    _, batches = run(dm.predict_dataloader())
    x, start = batches[0]["x"], batches[0]["start"].numpy()
    assert x.shape == (10 + 7, 3, 3, 12, 12)
    np.testing.assert_array_equal(frame_index(x, png=True), start[:, None] + np.arange(3))
    # 48x24 -> 24x12, centre crop = resized columns 6..17 = source columns 12..35: mean green ~ 4 * 23.5
    green = x[:, :, 1].float().mean((-1, -2))
    assert torch.allclose(green, torch.full_like(green, 4 * 23.5), atol=3)


def test_random_crop_moves_the_window_but_not_within_a_clip(tmp_path):
    write_frames(tmp_path / "wide", 30, width=64, height=16)
    dm = make_dm(tmp_path, n_frames=2, frame_size=16, batch_size=15, random_crop=True, shuffle_buffer=0)
    x = next(iter(dm.train_dataloader()))["x"]  # source 64x16 is not resized: crops are exact
    left = x[:, :, 1, 0, 0].numpy() // 4  # (B, T) source column of each crop's left edge
    assert (left[:, :1] == left).all()  # one window per clip
    assert len(np.unique(left[:, 0])) > 3 and left.min() >= 0 and left.max() <= 48
    # val/predict stay centre-cropped
    xv = next(iter(dm.predict_dataloader()))["x"]
    assert (xv[:, :, 1, 0, 0].numpy() // 4 == 24).all()


# -- sharding and determinism ------------------------------------------------------------------------
def shard_ids(dm: VideoClipDataModule, rank: int, world: int, epoch: int = 0, workers: int = 2):
    ds = dm.dataset("train", rank=rank, world_size=world)
    ds.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    ids, batches = run(loader)
    assert len(batches) == len(loader)  # len() is exact: batches never straddle workers
    return ids


def test_two_ranks_two_workers_cover_every_clip_once(even_root):
    dm = make_dm(even_root, stride=2, batch_size=4, drop_last=False, shuffle_buffer=8)
    per_rank = [shard_ids(dm, rank, 2) for rank in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 30
    assert not set(per_rank[0].tolist()) & set(per_rank[1].tolist())
    assert sorted(np.concatenate(per_rank).tolist()) == list(range(60))


def test_uneven_clip_count_gives_equal_ranks(mixed_root):
    dm = make_dm(mixed_root, stride=2, batch_size=4, drop_last=False, shuffle_buffer=8)
    per_rank = [shard_ids(dm, rank, 2) for rank in range(2)]
    # 75 clips: 37 per rank (equal step counts under DDP); one clip sits this epoch out
    assert len(per_rank[0]) == len(per_rank[1]) == 37
    union = np.concatenate(per_rank)
    assert len(set(union.tolist())) == 74 and set(union.tolist()) <= set(range(75))


def test_same_seed_and_epoch_same_order_other_epoch_or_seed_differs(even_root):
    dm = make_dm(even_root, stride=2, batch_size=4, shuffle_buffer=8)
    a, b = shard_ids(dm, 0, 1, epoch=0), shard_ids(dm, 0, 1, epoch=0)
    np.testing.assert_array_equal(a, b)
    c = shard_ids(dm, 0, 1, epoch=1)
    d = shard_ids(make_dm(even_root, stride=2, batch_size=4, shuffle_buffer=8, seed=1), 0, 1, epoch=0)
    assert sorted(a.tolist()) == sorted(c.tolist()) == sorted(d.tolist()) == list(range(60))
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_val_split_holds_out_whole_videos(mixed_root):
    dm = make_dm(mixed_root, val_fraction=0.34)
    train, val = {v.rel for v in dm.videos("train")}, {v.rel for v in dm.videos("val")}
    assert len(val) == 2 and len(train) == 4 and not train & val
    assert dm.videos("test") == dm.videos("val")
    assert {v.rel for v in make_dm(mixed_root, val_fraction=0.34).videos("val")} == val  # stable
    no_val = make_dm(mixed_root, val_fraction=0.0)
    assert no_val.val_dataloader() == []
    with pytest.raises(ValueError, match="val_fraction"):
        no_val.test_dataloader()


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_files_are_skipped_warned_and_counted(tmp_path, caplog):
    for k in range(2):
        write_video(tmp_path / f"good{k}.mp4", 20)
    write_video(tmp_path / "short.mp4", 3)  # a clip of n_frames=4 needs 4 frames
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "empty.webm").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a video\n")
    with pytest.warns(VideoSkipWarning) as record:
        dm = make_dm(tmp_path, n_frames=4, batch_size=2, num_workers=2)
    messages = [str(w.message) for w in record if issubclass(w.category, VideoSkipWarning)]
    for name in ("short.mp4", "garbage.mp4", "empty.webm", "notes.txt"):
        assert sum(name in m for m in messages) == 1, (name, messages)
    assert len(messages) == 4
    assert {r: len(p) for r, p in dm.skipped.items()} == {
        "unreadable": 2,
        "no_video_stream": 0,
        "too_short": 1,
        "not_a_video": 1,
    }
    loader = dm.train_dataloader()
    with caplog.at_level(logging.INFO, logger="sdcd.data_modules.video"):
        ids, _ = run(loader)
    assert sorted(ids.tolist()) == list(range(10))  # the epoch goes on with the good videos
    summary = loader.last_summary
    assert summary["files_unreadable"] == 2 and summary["files_too_short"] == 1
    assert (
        summary["files_not_a_video"] == 1 and summary["clips_yielded"] == 10 and summary["clips_failed"] == 0
    )
    assert any("clips_yielded=10" in r.getMessage() for r in caplog.records)


def truncated_video(path, n: int = 30):
    """An mp4 whose index (moov first) survives but whose second half is cut off: it fails mid-decode."""
    full = str(path) + ".full.mp4"
    write_video(full, n, width=64, height=64, faststart=True, noise=True)
    data = open(full, "rb").read()
    os.remove(full)
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("workers", [0, 2])
def test_decode_failure_loses_only_its_clips_and_is_counted(tmp_path, workers):
    for k in range(3):
        write_video(tmp_path / f"good{k}.mp4", 20)
    truncated_video(tmp_path / "cut.mp4")
    dm = make_dm(tmp_path, n_frames=2, batch_size=4, drop_last=False, num_workers=workers)
    cut = next(i for i, v in enumerate(dm.videos("train")) if v.rel == "cut.mp4")
    loader = dm.train_dataloader()
    if workers == 0:  # worker processes' warnings are not visible to pytest.warns
        with pytest.warns(VideoSkipWarning, match="cut.mp4"):
            ids, batches = run(loader)
    else:
        ids, batches = run(loader)
    s = loader.last_summary  # counted in the workers, added up here
    assert s["clips_planned"] == 30 + 15 and 0 < s["clips_failed"] < 15
    assert s["clips_yielded"] + s["clips_failed"] == s["clips_planned"] == len(ids) + s["clips_failed"]
    videos = np.concatenate([b["video"].numpy() for b in batches])
    assert (videos != cut).sum() == 30  # every clip of the intact videos
    assert (videos == cut).sum() == 15 - s["clips_failed"]  # and those of the cut one before the cut
    for b in batches:
        np.testing.assert_array_equal(frame_index(b["x"]), b["start"].numpy()[:, None] + np.arange(2))


def test_corrupt_frame_in_a_folder_loses_only_the_clips_from_there(tmp_path):
    write_frames(tmp_path / "clip", 12)
    (tmp_path / "clip" / "f6.png").write_bytes(b"\x89PNG not really")
    dm = make_dm(tmp_path, n_frames=2, batch_size=8, drop_last=False)  # clips start at 0, 2, ..., 10
    loader = dm.train_dataloader()
    with pytest.warns(VideoSkipWarning, match="clip"):
        _, batches = run(loader)
    assert sorted(int(s) for b in batches for s in b["start"]) == [0, 2, 4]  # the clips before frame 6
    assert loader.last_summary["clips_failed"] == 3 and loader.last_summary["clips_yielded"] == 3


def test_decode_failure_under_ddp_pads_to_equal_steps(tmp_path):
    for k in range(3):
        write_video(tmp_path / f"good{k}.mp4", 20)
    truncated_video(tmp_path / "cut.mp4")
    failed = 0
    for drop_last in (False, True):
        dm = make_dm(tmp_path, n_frames=2, batch_size=4, drop_last=drop_last)
        for rank in range(2):
            ds = dm.dataset("train", rank=rank, world_size=2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", VideoSkipWarning)
                ids, batches = run(DataLoader(ds, batch_size=None))
            s = ds.summary()
            assert len(batches) == len(ds)  # both ranks take the planned number of steps
            assert len(ids) == s["clips_yielded"] == ds.clips_per_rank - s["clips_dropped"]
            assert s["clips_padded"] == s["clips_failed"] and s["clips_dropped"] == (
                22 % 4 if drop_last else 0
            )
            failed += s["clips_failed"]
    assert failed > 0


def test_seeking_reads_the_same_frames_as_decoding_through(tmp_path, monkeypatch):
    write_video(tmp_path / "long.mp4", 300, gop=12)
    seeks = []
    decode_seeking = video_io._decode_seeking
    monkeypatch.setattr(video_io, "_decode_seeking", lambda *a: seeks.append(1) or decode_seeking(*a))

    def clips(**kwargs):
        dm = make_dm(tmp_path, n_frames=3, frame_skip=2, **kwargs)
        ds = dm.dataset("train", rank=1, world_size=2)  # dense: rank 1 starts mid-video
        return [b for loader in (dm.predict_dataloader(), DataLoader(ds, batch_size=None)) for b in loader]

    batches = clips(stride=70)  # sparse: 3 frames every 70 frames
    assert [int(s) for s in batches[0]["start"]] == [0, 70, 140, 210]
    assert len(seeks) == 2  # both readers jump between keyframes
    dense = clips(stride=6, shuffle_buffer=0)
    assert len(seeks) == 3  # only rank 1, which starts mid-video
    monkeypatch.setattr(video_io, "_SEEK_GAIN", 10**9)  # decode every frame from the first
    through = clips(stride=70) + clips(stride=6, shuffle_buffer=0)
    assert len(seeks) == 3 and len(through) == len(batches + dense)
    for seeking, plain in zip(batches + dense, through, strict=True):
        np.testing.assert_array_equal(
            frame_index(seeking["x"]), seeking["start"].numpy()[:, None] + 2 * np.arange(3)
        )
        assert torch.equal(seeking["x"], plain["x"]) and torch.equal(seeking["index"], plain["index"])


def test_folder_without_usable_clip_is_a_clear_error(tmp_path):
    write_video(tmp_path / "short.mp4", 5)
    (tmp_path / "garbage.mp4").write_bytes(b"\x00" * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VideoSkipWarning)
        with pytest.raises(ValueError, match="has no usable clip") as err:
            make_dm(tmp_path, n_frames=4, frame_skip=2)
    msg = str(err.value)
    assert str(tmp_path) in msg and ".mp4" in msg and "at least 7 frames" in msg and "too_short: 1" in msg
    with pytest.raises(FileNotFoundError, match="data.root"):
        make_dm(tmp_path / "missing")
    with pytest.raises(ValueError, match="data.n_frames"):
        VideoClipDataModule(str(tmp_path), n_frames=0)
    write_video(tmp_path / "ok.mp4", 10)
    with pytest.warns(VideoSkipWarning), pytest.raises(ValueError, match="no batch"):
        make_dm(tmp_path, n_frames=4, batch_size=4).train_dataloader()  # 2 clips of 4 frames, drop_last


# -- Lightning ---------------------------------------------------------------------------------------
class Recorder(LightningModule):
    """Records the clip ids of each training epoch and checks the batches it gets."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(scale))
        self.seen: dict[int, list[int]] = {}
        self.val_batches = 0

    def training_step(self, batch, batch_idx):
        x = batch["x"]
        assert x.dtype == torch.float32 and x.dim() == 5
        self.seen.setdefault(self.current_epoch, []).extend(batch["index"].tolist())
        return (self.w * x).mean()

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_fit_advances_the_epoch_with_persistent_workers(even_root):
    dm = VideoClipDataModule(
        str(even_root),
        n_frames=2,
        frame_size=16,
        batch_size=4,
        num_workers=2,
        val_fraction=0.2,
        shuffle_buffer=8,
        drop_last=False,
    )
    model = Recorder()
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on workers / IterableDataset __len__
        trainer.fit(model, datamodule=dm)
    n_train = sum(dm.dataset("train", 0, 1).clip_counts)
    for epoch in (0, 1):
        assert sorted(model.seen[epoch]) == list(range(n_train))
        expected = shard_ids(dm, 0, 1, epoch=epoch)  # the same stream outside Lightning
        assert model.seen[epoch] == expected.tolist()
    assert model.seen[0] != model.seen[1]
    assert model.val_batches > 0


def test_lightning_cli_builds_it_from_yaml(even_root, tmp_path, capsys):
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n"
        "  class_path: sdcd.data_modules.video.VideoClipDataModule\n"
        "  init_args:\n"
        f"    root: {even_root}\n"
        "    n_frames: 4\n"
        "    frame_skip: 2\n"
        "    frame_size: 32\n"
        "    random_crop: true\n"
    )

    def cli(args):  # (quietly: jsonargparse deprecation notes, the args-vs-sys.argv note)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LightningCLI(Recorder, LightningDataModule, subclass_mode_data=True, run=False, args=args)

    dm = cli(["--config", str(config), "--trainer.logger=false"]).datamodule
    assert isinstance(dm, VideoClipDataModule)
    assert (dm.n_frames, dm.frame_skip, dm.stride, dm.frame_size, dm.random_crop) == (4, 2, 8, 32, True)
    with pytest.raises(SystemExit):
        cli(["--data.help", "sdcd.data_modules.video.VideoClipDataModule"])
    out = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "--data.frame_skip" in out and "Step between the frames of a clip (2: every other frame)" in out


class RankRecorder(Recorder):
    """Writes the clip ids each rank trained on to `out/rank{r}_epoch{e}.npy` (spawned processes)."""

    def __init__(self, out: str):
        super().__init__()
        self.out = out

    def on_train_epoch_end(self):
        ids = np.asarray(self.seen.get(self.current_epoch, []), dtype=np.int64)
        tmp = os.path.join(self.out, f".rank{self.global_rank}_epoch{self.current_epoch}.npy")
        np.save(tmp, ids)
        os.replace(tmp, os.path.join(self.out, f"rank{self.global_rank}_epoch{self.current_epoch}.npy"))


@pytest.mark.slow
def test_ddp_two_cpu_ranks_train_on_disjoint_equal_shards(mixed_root, tmp_path):
    dm = VideoClipDataModule(
        str(mixed_root),
        n_frames=2,
        frame_size=16,
        batch_size=4,
        num_workers=0,
        val_fraction=0.0,
        shuffle_buffer=8,
        drop_last=False,
    )
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(RankRecorder(str(tmp_path)), datamodule=dm)
    for epoch in (0, 1):
        r0, r1 = (np.load(tmp_path / f"rank{r}_epoch{epoch}.npy") for r in (0, 1))
        assert len(r0) == len(r1) == 75 // 2  # equal steps; one of the 75 clips sits the epoch out
        assert not set(r0.tolist()) & set(r1.tolist()) and set(r0.tolist()) | set(r1.tolist()) <= set(
            range(75)
        )
        np.testing.assert_array_equal(
            r0, shard_ids(dm, 0, 2, epoch=epoch, workers=0)
        )  # torch.distributed's rank
    assert not np.array_equal(np.load(tmp_path / "rank0_epoch0.npy"), np.load(tmp_path / "rank0_epoch1.npy"))
