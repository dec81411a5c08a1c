"""VisualCallback: pictures of reconstructions, swaps and prior samples, every N epochs and at test time.

Four pictures are drawn from a fixed set of n sequences x_1..x_n: the first n rows of a split when
the DataModule has `.batch(split, index, device)`, otherwise the first batch the stage sees.

* `recon`: each sequence (a row) with its reconstruction decode(f_i, λ_i) on the row below.
* `swap`: an (n+1)×(n+1) grid. The first row holds the dynamics sources x_j and the first column the
  static sources x_i; cell (i, j) is decode(f_i, λ_j). Its diagonal is the reconstruction.
* `sample_dynamics`: row i is x_i, then k = `N_PRIOR_SAMPLES` videos that keep f_i and take their
  dynamics from the LSTM prior. Column j uses the same trajectory λ_j in every row.
* `sample_static`: row i is x_i, then k videos that keep λ_i and take their static code from the
  RealNVP prior. Column j uses the same code f_j in every row.

Each picture is saved twice. The GIF animates the whole grid, one GIF frame per video frame t. A
progress bar under the grid shows t, which keeps consecutive frames distinct: Pillow merges equal
frames, and the bar makes a GIF always hold exactly T frames. The PNG is a grid of film strips: each
cell shows its frames left to right. A grid with one cell per row (`recon`) shows all T frames.
Grids with several cells per row show `PNG_STRIP_FRAMES` evenly spaced frames per cell, so a 7×7
swap grid at 64×64 stays readable (about 3.6k px wide instead of 14k).

Picture geometry (gaps, bars, upscaling): docs/decisions.md.

Files go to `<run dir>/pictures/<name>_epoch{E:03d}.{png,gif}`, or `<name>_test.*` at test time, and
are written atomically. With a WandbLogger the PNGs are logged as `pictures/<name>` images and the
GIFs as `animations/<name>` videos. Codes and samples come from a fixed seed inside a forked RNG, so
pictures with the same weights are identical and the training randomness is left as it was.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from sdcd.io import atomic_write_stream
from sdcd.runs import output_dir, trainer_run_dir

log = logging.getLogger(__name__)

KINDS = ("recon", "swap", "sample_dynamics", "sample_static")
REQUIRED_API = ("encode", "decode", "sample_static", "sample_dynamics")
FRAME_GAP = 1  # white pixels between the frames of a film strip
CELL_GAP = 4  # white pixels between cells (strips, or videos in a GIF)
BAR_HEIGHT = 3  # GIF progress bar under the grid
PNG_STRIP_FRAMES = 4  # frames per cell in PNG grids with several cells per row
N_PRIOR_SAMPLES = 3  # prior samples per sequence in the sample_* pictures
DECODE_FRAMES = 256  # frames per decoder call (bounds the memory of the n² swap decodes)
SEED = 0  # seed of every random draw in the pictures (feature noise, posterior and prior samples)
_BAR_TRACK, _BAR_FILL = 0.85, 0.35  # grey levels of the progress bar


# ----------------------------------------------------------------------------------- drawing (pure)
def upscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour upsampling of the last two dims by an integer factor."""
    return x if scale == 1 else x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def tile(cells: torch.Tensor, gap: int) -> torch.Tensor:
    """cells (..., R, K, C, h, w) → images (..., C, R·h + (R−1)·gap, K·w + (K−1)·gap), white between cells.

    White is 255 for uint8 cells, else 1.0.
    """
    *lead, r, k, c, h, w = cells.shape
    white = 255 if cells.dtype == torch.uint8 else 1.0
    padded = torch.nn.functional.pad(cells, (0, gap, 0, gap), value=white)  # each cell + its right/bottom gap
    n = len(lead)
    dims = (*range(n), n + 2, n, n + 3, n + 1, n + 4)  # (..., C, R, h+gap, K, w+gap)
    img = padded.permute(dims).reshape(*lead, c, r * (h + gap), k * (w + gap))
    return img[..., : r * (h + gap) - gap, : k * (w + gap) - gap]


def strip_indices(n_frames: int, n_cols: int) -> torch.Tensor:
    """The frames a PNG film strip shows: all of them with one cell per row, else a few evenly spaced."""
    if n_cols == 1 or n_frames <= PNG_STRIP_FRAMES:
        return torch.arange(n_frames)
    return torch.linspace(0, n_frames - 1, PNG_STRIP_FRAMES).round().long()


def png_grid(videos: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """videos (R, K, T, C, h, w) → a grid of film strips (C, H, W), frames upscaled by `scale`."""
    shown = upscale(videos[:, :, strip_indices(videos.shape[2], videos.shape[1])], scale)
    strips = tile(shown[:, :, None], FRAME_GAP)  # (R, K, C, h·s, strip width): one row of frames per cell
    return tile(strips, CELL_GAP)


def gif_frames(videos: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """videos (R, K, T, C, h, w) → T images (T, C, H + BAR_HEIGHT, W): the grid at time t over a bar
    whose filled part grows with t (so no two consecutive frames are equal)."""
    t = videos.shape[2]
    grids = tile(upscale(videos, scale).movedim(2, 0), CELL_GAP)  # (T, C, H, W)
    width = grids.shape[-1]
    track, fill = (round(v * 255) if grids.dtype == torch.uint8 else v for v in (_BAR_TRACK, _BAR_FILL))
    bar = grids.new_full((t, grids.shape[1], BAR_HEIGHT, width), track)
    for i in range(t):
        bar[i, :, :, : (i + 1) * width // t] = fill
    return torch.cat([grids, bar], dim=2)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] → uint8 in [0, 255] (clamped, rounded)."""
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)


def to_pil(img: torch.Tensor) -> Image.Image:
    """(C, H, W), uint8 or floats in [0, 1], C ∈ {1, 3} → a PIL image ("L" or "RGB")."""
    if img.shape[0] not in (1, 3):
        raise ValueError(f"pictures need 1 or 3 colour channels, got an image of shape {tuple(img.shape)}")
    arr = (img if img.dtype == torch.uint8 else to_uint8(img)).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr[..., 0], "L") if arr.shape[-1] == 1 else Image.fromarray(arr, "RGB")


def layouts(videos: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each picture's (PNG grid, GIF grid) of videos (R, K, T, C, h, w). Only `recon` differs: its PNG
    has one strip per row (original, reconstruction, original, ...), its GIF 2 rows × n columns."""
    out = {name: (v, v) for name, v in videos.items() if name != "recon"}
    if "recon" in videos:  # stored as (n, 2, T, C, h, w): (original, reconstruction) per sequence
        pairs = videos["recon"]
        out = {"recon": (pairs.flatten(0, 1)[:, None], pairs.transpose(0, 1)), **out}
    return out


# ----------------------------------------------------------------------------------- model (codes)
def has_picture_api(module: Any) -> bool:
    return all(callable(getattr(module, name, None)) for name in REQUIRED_API)


@contextlib.contextmanager
def seeded(device: torch.device, seed: int = SEED) -> Iterator[None]:
    """Fork the CPU RNG (and `device`'s, for CUDA) and seed them: the caller's streams are untouched."""
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


def model_videos(model: Any, x: torch.Tensor, n_samples: int = N_PRIOR_SAMPLES,
                 max_frames: int = DECODE_FRAMES) -> dict[str, torch.Tensor]:
    """The videos of every picture for sequences x (n, T, C, h, w), as CPU float grids (R, K, T, C, h, w).

    Call it under no_grad, eval mode and `seeded`: it draws feature noise, posterior and prior samples.
    All n² + 2nk decodes run in chunks of at most `max_frames` frames, which bounds the memory.
    """
    n, t = x.shape[:2]
    k = n_samples
    codes = model.encode(x)
    f, lam = codes.f, codes.lam
    lam_prior = model.sample_dynamics(k, n_frames=t)  # (k, T, D)
    f_prior = model.sample_static(k)  # (k, D)
    # (static, dynamic) code pairs: swap (row i, column j), then f_i with λ_prior_j, then f_prior_j with λ_i
    statics = torch.cat([f.repeat_interleave(n, 0), f.repeat_interleave(k, 0), f_prior.repeat(n, 1)])
    dynamics = torch.cat([lam.repeat(n, 1, 1), lam_prior.repeat(n, 1, 1), lam.repeat_interleave(k, 0)])
    chunk = max(1, max_frames // t)
    out = torch.cat([model.decode(statics[i : i + chunk], dynamics[i : i + chunk]).float().clamp(0, 1).cpu()
                     for i in range(0, len(statics), chunk)])
    swap, dyn, sta = out.split([n * n, n * k, n * k])
    x = x.float().cpu()
    column = x[:, None]  # the sequences themselves, as the first column of a grid
    header = torch.cat([x.new_ones(1, *x.shape[1:]), x])[None]  # a white corner, then the dynamics sources
    return {
        "recon": torch.stack([x, swap.unflatten(0, (n, n))[range(n), range(n)]], dim=1),  # swap's diagonal
        "swap": torch.cat([header, torch.cat([column, swap.unflatten(0, (n, n))], dim=1)]),
        "sample_dynamics": torch.cat([column, dyn.unflatten(0, (n, k))], dim=1),
        "sample_static": torch.cat([column, sta.unflatten(0, (n, k))], dim=1),
    }


# ----------------------------------------------------------------------------------- files
def save_png(path: Path, img: Image.Image) -> None:
    atomic_write_stream(path, lambda fh: img.save(fh, format="PNG", compress_level=1))  # fast; frames are mostly flat


def save_gif(path: Path, frames: torch.Tensor, fps: int, stride: int = 1) -> None:
    """Frames (T, C, H, W) uint8, C ∈ {1, 3} → an endless GIF. All frames share one palette (no colour
    flicker), built from every `stride`-th pixel of every frame plus white; pixels take the nearest colour."""
    rgb = frames.expand(-1, 3, -1, -1) if frames.shape[1] == 1 else frames
    arrays = rgb.permute(0, 2, 3, 1).contiguous().numpy()  # (T, H, W, 3)
    white = np.full((1, 1, 3), 255, np.uint8)
    sample = np.concatenate([arrays[:, ::stride, ::stride].reshape(-1, 1, 3), white])  # a column of pixels
    no_dither = Image.Dither.NONE
    palette = Image.fromarray(sample).quantize(256, method=Image.Quantize.FASTOCTREE, dither=no_dither)
    indexed = [Image.fromarray(a).quantize(palette=palette, dither=no_dither) for a in arrays]
    atomic_write_stream(path, lambda fh: indexed[0].save(fh, format="GIF", save_all=True, append_images=indexed[1:],
                                                 duration=round(1000 / fps), loop=0))


# ----------------------------------------------------------------------------------- callback
class VisualCallback(Callback):
    """Renders reconstructions, swaps and prior samples as PNG film strips and GIFs, and logs them.

    Runs at the end of every `every_n_epochs`-th validation epoch (never in the sanity check, nor with
    fast_dev_run) and at the end of testing, on global rank 0 only. Needs a model with `encode`, `decode`,
    `sample_static` and `sample_dynamics` (SDCD); for any other module it does nothing. See the module
    docstring for the pictures and their layout.

    Args:
        every_n_epochs: Draw after every n-th epoch's validation (epochs n−1, 2n−1, ... counted from 0);
            0 draws only at test time.
        n_sequences: How many fixed sequences the pictures show (the first rows of the split).
        split: Split the validation pictures take their sequences from, when the DataModule has
            `.batch(split, index, device)`; test pictures use "test". Otherwise each stage uses the
            first batch it sees.
        out_dir: Folder that receives `pictures/`; default the run's log directory.
        on_test: Also draw at the end of testing (files `<name>_test.png/.gif`).
        gif_fps: Frames per second of the GIFs.
        scale: Integer upsampling of every frame (nearest neighbour), so small frames stay visible.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        n_sequences: int = 6,
        split: str = "val",
        out_dir: str | None = None,
        on_test: bool = True,
        gif_fps: int = 4,
        scale: int = 2,
    ):
        for name, value, low in [("every_n_epochs", every_n_epochs, 0), ("n_sequences", n_sequences, 1),
                                 ("gif_fps", gif_fps, 1), ("scale", scale, 1)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"VisualCallback.{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"VisualCallback.split must be a split name such as 'val', got {split!r}")
        self.every_n_epochs, self.n_sequences, self.split = every_n_epochs, n_sequences, split
        self.out_dir, self.on_test, self.gif_fps, self.scale = out_dir, on_test, gif_fps, scale
        self._cache: dict[str, torch.Tensor] = {}  # stage ("val" | "test") → fixed sequences
        self._run_dir: str | None = None
        self._warned: set[str] = set()
        self.last_seconds: float | None = None  # duration of the last drawing (render + files + logging)
        self.last_files: list[Path] = []

    # -- hooks ----------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts: resolve it here, on every rank, never inside the rank-0 branch.
        self._run_dir = self.out_dir or (None if trainer.fast_dev_run else str(trainer_run_dir(trainer)))

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # `make eval CKPT=…`: pictures go next to metrics.json, in the checkpoint's run directory (known
        # once the checkpoint is restored; called on every rank, so the log_dir fallback may broadcast)
        if not self.out_dir and not trainer.fast_dev_run:
            self._run_dir = str(output_dir(trainer))

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._remember(trainer, "val", batch, dataloader_idx)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._remember(trainer, "test", batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs == 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.draw(trainer, pl_module, "val", f"epoch{trainer.current_epoch:03d}")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.on_test:
            self.draw(trainer, pl_module, "test", "test")

    # -- work -----------------------------------------------------------------------------------
    def draw(self, trainer: Trainer, pl_module: LightningModule, stage: str, tag: str) -> list[Path]:
        """Render, save and log every picture for `stage` ("val" | "test"); returns the files written."""
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return []
        if not has_picture_api(pl_module):
            missing = [a for a in REQUIRED_API if not callable(getattr(pl_module, a, None))]
            self._info_once("api", f"VisualCallback: {type(pl_module).__name__} has no {', '.join(missing)}; "
                                   "no pictures are drawn")
            return []
        x = self._sequences(trainer, pl_module, stage)
        if x is None:
            self._info_once(f"data-{stage}", f"VisualCallback: no {stage} sequences with an 'x' to draw")
            return []
        start = time.perf_counter()
        videos = self.render(trainer, pl_module, x)
        folder = Path(self._run_dir or trainer.default_root_dir) / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        files, images = [], {}
        for name, (png_videos, gif_videos) in layouts(videos).items():
            png = to_pil(png_grid(to_uint8(png_videos), self.scale))
            gif = gif_frames(to_uint8(gif_videos), self.scale)
            paths = folder / f"{name}_{tag}.png", folder / f"{name}_{tag}.gif"
            save_png(paths[0], png)
            save_gif(paths[1], gif, self.gif_fps, stride=self.scale)
            files += paths
            images[name] = (png, paths[1])
        self._log_wandb(trainer, images)
        self.last_seconds, self.last_files = time.perf_counter() - start, files
        log.debug("VisualCallback: %d pictures in %s (%.2f s)", len(images), folder, self.last_seconds)
        return files

    def render(self, trainer: Trainer | None, pl_module: LightningModule,
               x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The videos of every picture (see `model_videos`), drawn in eval mode with a fixed seed."""
        x = x[: self.n_sequences].to(pl_module.device)
        precision = trainer.precision_plugin if trainer is not None else None
        if precision is not None:
            x = precision.convert_input(x)
        was_training = pl_module.training
        pl_module.eval()
        try:
            context = precision.forward_context() if precision is not None else contextlib.nullcontext()
            with torch.no_grad(), seeded(pl_module.device), context:
                return model_videos(pl_module, x)
        finally:
            pl_module.train(was_training)

    # -- helpers --------------------------------------------------------------------------------
    def _datamodule_batch(self, trainer: Trainer) -> Callable | None:
        dm = getattr(trainer, "datamodule", None)
        fn = getattr(dm, "batch", None)
        return fn if callable(fn) else None

    def _remember(self, trainer: Trainer, stage: str, batch: Any, dataloader_idx: int) -> None:
        """Fallback without `datamodule.batch`: keep the first n sequences of the stage's first batch."""
        if stage in self._cache or dataloader_idx != 0 or not trainer.is_global_zero:
            return
        if self._datamodule_batch(trainer) is not None:
            return
        x = batch.get("x") if isinstance(batch, dict) else batch
        if isinstance(x, torch.Tensor) and x.ndim == 5:
            self._cache[stage] = x[: self.n_sequences].detach().clone()

    def _sequences(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> torch.Tensor | None:
        if stage not in self._cache:
            fetch = self._datamodule_batch(trainer)
            if fetch is None:
                return None
            split = self.split if stage == "val" else "test"
            size = getattr(trainer.datamodule, "split_size", None)
            n = min(self.n_sequences, size(split)) if callable(size) else self.n_sequences
            x = fetch(split, list(range(n)), pl_module.device)["x"]
            if x.ndim != 5:
                raise ValueError(f"VisualCallback: batch['x'] of split {split!r} must be (B, T, C, H, W), "
                                 f"got shape {tuple(x.shape)}")
            self._cache[stage] = x
        return self._cache[stage]

    def _log_wandb(self, trainer: Trainer, images: dict[str, tuple[Image.Image, Path]]) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            try:
                import wandb

                step = trainer.global_step
                for name, (png, _) in images.items():
                    logger.log_image(key=f"pictures/{name}", images=[png], step=step)
                videos = {f"animations/{name}": wandb.Video(str(gif), format="gif")
                          for name, (_, gif) in images.items()}
                logger.experiment.log({**videos, "trainer/global_step": step})
            except Exception as err:  # pictures must never stop a run; the files are on disk anyway
                self._info_once("wandb", f"VisualCallback: logging pictures to W&B failed ({err!r}); "
                                         "the PNG/GIF files are still written", level=logging.WARNING)

    def _info_once(self, key: str, message: str, level: int = logging.INFO) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.log(level, message)
