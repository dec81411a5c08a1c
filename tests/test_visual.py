"""VisualCallback: PNG film strips and GIFs of reconstructions, swaps and prior samples."""

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from PIL import Image
from torch.utils.data import DataLoader

from sdcd.callbacks import visual
from sdcd.callbacks.visual import (
    BAR_HEIGHT,
    CELL_GAP,
    FRAME_GAP,
    KINDS,
    N_PRIOR_SAMPLES,
    PNG_STRIP_FRAMES,
    VisualCallback,
)
from sdcd.cli import main
from sdcd.data_modules.dsprites import MovingDSpritesDataModule
from sdcd.model import SDCD

T, FRAME = 4, 32  # the tiny config's frames


def tiny_data(batch_size: int = 8) -> MovingDSpritesDataModule:
    return MovingDSpritesDataModule(n_train=64, n_val=16, n_test=16, n_frames=T, frame_size=FRAME,
                                    batch_size=batch_size)


def trainer(tmp_path: Path, callbacks: list, **kwargs) -> Trainer:
    kwargs = {"max_epochs": 2, "limit_train_batches": 2, "limit_val_batches": 1, "limit_test_batches": 1,
              "logger": CSVLogger(tmp_path, name="run"), **kwargs}
    return Trainer(accelerator="cpu", callbacks=callbacks, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs)


def expected_sizes(n: int, t: int = T, frame: int = FRAME, scale: int = 2) -> dict[str, tuple[tuple, tuple]]:
    """(PNG size, GIF size) of every picture, as PIL (width, height), from the documented geometry."""
    px = frame * scale

    def span(cells: int, size: int, gap: int = CELL_GAP) -> int:
        return cells * size + (cells - 1) * gap

    def strip(frames: int) -> int:
        return span(frames, px, FRAME_GAP)

    shown = min(t, PNG_STRIP_FRAMES)
    cols = 1 + N_PRIOR_SAMPLES
    sample = ((span(cols, strip(shown)), span(n, px)), (span(cols, px), span(n, px) + BAR_HEIGHT))
    square = span(n + 1, px)
    return {
        "recon": ((strip(t), span(2 * n, px)), (span(n, px), span(2, px) + BAR_HEIGHT)),
        "swap": ((span(n + 1, strip(shown)), square), (square, square + BAR_HEIGHT)),
        "sample_dynamics": sample,
        "sample_static": sample,
    }


def check_pictures(folder: Path, tag: str, n: int, t: int = T) -> None:
    for name, (png_size, gif_size) in expected_sizes(n, t).items():
        with Image.open(folder / f"{name}_{tag}.png") as png:
            assert (png.format, png.mode, png.size) == ("PNG", "RGB", png_size), name
        with Image.open(folder / f"{name}_{tag}.gif") as gif:
            assert (gif.format, gif.size, gif.n_frames) == ("GIF", gif_size, t), name
            assert gif.info["loop"] == 0 and gif.info["duration"] == 250, name  # gif_fps=4


def tags(folder: Path) -> set[str]:
    return {p.stem.split("_")[-1] for p in folder.glob("*.png")}


class Spy(VisualCallback):
    """Records the state of the trainer at every drawing."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def draw(self, trainer, pl_module, stage, tag):
        self.calls.append((trainer.sanity_checking, stage, tag))
        return super().draw(trainer, pl_module, stage, tag)


def test_fit_and_test_draw_every_picture_every_n_epochs(tmp_path, tiny_model_kwargs):
    model = SDCD(**tiny_model_kwargs)
    every = Spy()  # into the logger's run directory
    second = Spy(every_n_epochs=2, out_dir=str(tmp_path / "every2"), on_test=False)
    tr = trainer(tmp_path, [every, second])
    tr.fit(model, tiny_data())
    tr.test(model, tiny_data())

    run_pictures = Path(tr.log_dir) / "pictures"
    assert run_pictures == tmp_path / "run" / "version_0" / "pictures"
    assert tags(run_pictures) == {"epoch000", "epoch001", "test"}
    for tag in ("epoch000", "epoch001", "test"):
        check_pictures(run_pictures, tag, n=6)
    assert {p.suffix for p in run_pictures.iterdir()} == {".png", ".gif"}  # no temp files left behind
    # every_n_epochs=2 skips epoch 0; on_test=False skips the test pictures; the sanity check draws nothing
    assert tags(tmp_path / "every2" / "pictures") == {"epoch001"}
    check_pictures(tmp_path / "every2" / "pictures", "epoch001", n=6)
    assert every.calls == [(False, "val", "epoch000"), (False, "val", "epoch001"), (False, "test", "test")]
    assert second.calls == [(False, "val", "epoch001")]
    # the fixed sequences: the first rows of the val split (validation) and of the test split (test)
    for stage, split in (("val", "val"), ("test", "test")):
        assert torch.equal(every._cache[stage], tiny_data().batch(split, list(range(6)))["x"]), stage

    # Same weights, same pictures: drawing again reproduces the last epoch's files byte for byte.
    again = every.draw(tr, model, "val", "again")
    assert len(again) == 2 * len(KINDS)
    for name in KINDS:
        for ext in ("png", "gif"):
            assert (run_pictures / f"{name}_again.{ext}").read_bytes() == \
                (run_pictures / f"{name}_epoch001.{ext}").read_bytes(), (name, ext)
    assert every.last_seconds is not None and every.last_seconds > 0


def test_render_is_seeded_and_leaves_rng_and_train_mode_alone(tiny_model_kwargs):
    model = SDCD(**tiny_model_kwargs).train()
    x = tiny_data().batch("val", [0, 1, 2])["x"]
    cb = VisualCallback(n_sequences=3)
    rng = torch.get_rng_state()
    first, second = cb.render(None, model, x), cb.render(None, model, x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    assert first.keys() == second.keys() == set(KINDS)
    for name in KINDS:
        assert torch.equal(first[name], second[name]), name
    assert first["swap"].shape == (4, 4, T, 3, FRAME, FRAME)
    assert first["recon"].shape == (3, 2, T, 3, FRAME, FRAME)
    grid = (3, 1 + N_PRIOR_SAMPLES, T, 3, FRAME, FRAME)
    assert first["sample_static"].shape == first["sample_dynamics"].shape == grid
    # the grids' first column (and the swap's first row) are the inputs, the swap's diagonal is the recon
    assert torch.equal(first["swap"][1:, 0], x) and torch.equal(first["swap"][0, 1:], x)
    assert torch.all(first["swap"][0, 0] == 1)  # white corner
    assert torch.equal(first["recon"][:, 0], x)
    assert torch.equal(first["recon"][:, 1], first["swap"][1:, 1:].diagonal(dim1=0, dim2=1).movedim(-1, 0))
    assert torch.equal(first["sample_dynamics"][:, 0], x) and torch.equal(first["sample_static"][:, 0], x)
    # the prior samples vary along a row
    assert not torch.equal(first["sample_dynamics"][0, 1], first["sample_dynamics"][0, 2])
    assert not torch.equal(first["sample_static"][0, 1], first["sample_static"][0, 2])


def test_grid_geometry_grey_frames_and_constant_videos(tmp_path):
    # 2×3 cells of 10-frame grey videos: the PNG strips show PNG_STRIP_FRAMES frames spread over T
    videos = torch.zeros(2, 3, 10, 1, 5, 7)
    videos[:, :, 9] = 0.5  # only the last frame differs, and the strips must include it
    png = visual.png_grid(visual.to_uint8(videos), scale=3)
    strip = PNG_STRIP_FRAMES * 21 + (PNG_STRIP_FRAMES - 1) * FRAME_GAP
    assert png.shape == (1, 2 * 15 + CELL_GAP, 3 * strip + 2 * CELL_GAP)
    assert png[0, 0, strip - 1] == 128 and png[0, 0, 0] == 0  # strip: first frame ... last frame
    assert png[0, 0, 21] == 255  # white gap after the first frame
    assert visual.to_pil(png).mode == "L"
    # a video whose frames are all equal still gives T GIF frames (the progress bar differs)
    frames = visual.gif_frames(visual.to_uint8(torch.full((1, 2, 6, 3, 4, 4), 0.4)), scale=1)
    assert frames.shape == (6, 3, 4 + BAR_HEIGHT, 8 + CELL_GAP)
    visual.save_gif(tmp_path / "still.gif", frames, fps=10)
    with Image.open(tmp_path / "still.gif") as gif:
        assert gif.n_frames == 6 and gif.info["duration"] == 100
        gif.seek(5)
        assert gif.convert("RGB").getpixel((0, 0)) == (102, 102, 102)  # 0.4·255, kept exactly by the palette
    assert visual.strip_indices(16, 7).tolist() == [0, 5, 10, 15]
    assert visual.strip_indices(16, 1).tolist() == list(range(16))
    with pytest.raises(ValueError, match="colour channels"):
        visual.to_pil(torch.zeros(2, 4, 4))


@pytest.mark.parametrize("arg, value", [("every_n_epochs", -1), ("n_sequences", 0), ("gif_fps", 0),
                                        ("scale", 0), ("scale", 1.5), ("split", "")])
def test_rejects_bad_arguments(arg, value):
    with pytest.raises(ValueError, match=f"VisualCallback.{arg}"):
        VisualCallback(**{arg: value})


class NoPictureModule(LightningModule):
    """A module without the picture API (like the judge)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def validation_step(self, batch, batch_idx):
        self.log("val/y", self.layer(batch["x"].mean((1, 3, 4))).mean(), batch_size=batch["x"].shape[0])

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)


def unlabelled_videos(n: int = 4) -> DataLoader:
    """Video batches without labels and without a datamodule (the fallback path)."""
    x = torch.rand(n, T, 3, FRAME, FRAME, generator=torch.Generator().manual_seed(0))
    return DataLoader([{"x": v} for v in x], batch_size=n)


def test_module_without_the_api_is_a_no_op(tmp_path, caplog):
    cb = VisualCallback(out_dir=str(tmp_path / "out"))
    tr = trainer(tmp_path, [cb])
    with caplog.at_level(logging.INFO, logger=visual.__name__):
        tr.validate(NoPictureModule(), unlabelled_videos())
        tr.test(NoPictureModule(), unlabelled_videos())
    assert not (tmp_path / "out").exists()
    notes = [r for r in caplog.records if r.name == visual.__name__]
    assert len(notes) == 1 and "NoPictureModule has no encode" in notes[0].getMessage()


def test_without_datamodule_uses_the_first_batch_and_wandb_disabled_works(tmp_path, tiny_model_kwargs, caplog,
                                                                          monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    model = SDCD(**tiny_model_kwargs)
    cb = VisualCallback()  # 6 wanted, the batch has 4
    logger = WandbLogger(save_dir=str(tmp_path / "wandb_run"))
    tr = trainer(tmp_path, [cb], logger=logger)
    with caplog.at_level(logging.WARNING, logger=visual.__name__):
        tr.validate(model, unlabelled_videos())
        tr.test(model, unlabelled_videos())
    folder = tmp_path / "wandb_run" / "pictures"  # trainer.log_dir: the W&B logger's save_dir
    check_pictures(folder, "epoch000", n=4)
    check_pictures(folder, "test", n=4)
    assert not [r for r in caplog.records if r.name == visual.__name__]  # W&B logging did not fail


class SpyWandb(WandbLogger):
    def __init__(self):
        super().__init__(offline=True)
        self.images, self.logged = [], []

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, step))

    @property
    def experiment(self):
        return SimpleNamespace(log=self.logged.append)


def test_wandb_receives_images_and_gif_videos(tmp_path):
    import wandb

    png, gif = Image.new("RGB", (4, 4)), tmp_path / "a.gif"
    Image.new("RGB", (4, 4)).save(gif, save_all=True, append_images=[Image.new("RGB", (4, 4), "white")])
    spy = SpyWandb()
    stub = SimpleNamespace(loggers=[CSVLogger(tmp_path), spy], global_step=7)
    VisualCallback()._log_wandb(stub, {"recon": (png, gif), "swap": (png, gif)})
    assert [(key, images, step) for key, images, step in spy.images] == [("pictures/recon", [png], 7),
                                                                         ("pictures/swap", [png], 7)]
    (logged,) = spy.logged
    assert set(logged) == {"animations/recon", "animations/swap", "trainer/global_step"}
    assert isinstance(logged["animations/swap"], wandb.Video) and logged["trainer/global_step"] == 7


def test_cli_run_writes_pictures_in_the_run_directory(in_tmp):
    cli = main(["fit", "--config", "tests/configs/tiny.yaml", "--trainer.fast_dev_run=false",
                "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                "--trainer.callbacks+=sdcd.callbacks.visual.VisualCallback"])
    assert cli.trainer.state.finished
    (folder,) = (in_tmp / "runs" / "tiny").glob("*/pictures")  # runs/<experiment>/<run id>/pictures
    check_pictures(folder, "epoch000", n=6)
    assert tags(folder) == {"epoch000"}
