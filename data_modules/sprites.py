"""SpritesDataModule: LPC Sprites (Li & Mandt 2018), 1296 characters × 9 motions × 8 frames of 64×64 RGB,
held in memory as a uint8 table; batches are assembled by indexing. How the data are built from the
sheets and cached: sdcd.data_modules.sprites_io.

Splits of the DataModule (`val` argument):
- "holdout" (default): the last `val_characters` training characters (in the seed-423 order) are
  val; train keeps the other characters (9000 − 9·val_characters sequences). No test data is seen
  before testing.
- "test": train is the full published 9000; val is the first `val_characters` test characters
  (model selection on test data, as most peer code does; numbers then compare to published ones).

Art credit: Liberated Pixel Cup (lpc.opengameart.org) and jrconway3/Universal-LPC-spritesheet;
CC-BY-SA 3.0 / GPL 3.0. The sheets are never stored in this repository.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from sdcd.data_modules import sprites_io as sio
from sdcd.data_modules.base import Factor, IndexedDataModule

log = logging.getLogger(__name__)


class _Source:
    """One published array (train or test), restricted to the rows some split uses."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, char: np.ndarray):
        self.x = torch.from_numpy(x)  # (n, T, C, H, W) uint8
        self.labels = torch.from_numpy(labels)  # (n, T, 5) int64
        self.char = char  # (n,) character id of each row
        self.on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def to(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self.on_device:  # moved once per device, then reused by every batch
            self.on_device[key] = (self.x.to(device), self.labels.to(device))
        return self.on_device[key]


class SpritesDataModule(IndexedDataModule):
    """LPC Sprites (Li & Mandt 2018): 8 frames of 64×64 RGB; static skin/pants/top/hair, dynamic action.

    The full build (11,664 sequences, 1.15 GB uint8) is cached on disk and kept in memory (on the GPU
    when training there). Splits: the published 9000/2664 train/test characters split, with val taken
    as set by `val` (see the module docstring).

    Args:
        batch_size: training batch size.
        eval_batch_size: val/test batch size (default: batch_size).
        drop_last: drop the last incomplete training batch.
        sheets_dir: folder of the LPC sheets (body/, bottomwear/, topwear/, hair/, shoes/). Default: the
            first existing of $SDCD_SPRITES_DIR, ./data/lpc-sprites, ../shared/data/lpc-sprites.
        npy_dir: load the peers' files sprites_{X,A,D}_{train,test}.npy from this folder instead of
            building from the sheets.
        cache_dir: where the built uint8 arrays are cached. Default: $SDCD_CACHE_DIR, else ~/.cache/sdcd.
        download: fetch missing sheets from github.com/YingzhenLi/Sprites (checked against the shipped
            SHA-256 list) into sheets_dir, else ./data/lpc-sprites.
        n_characters: use only the first n characters of each split (in the seed-423 order): for
            tests and smoke runs; builds just those characters.
        val: "holdout" = val is the last val_characters training characters, removed from train;
            "test" = train is the full published 9000 and val is the first val_characters test characters.
        val_characters: number of characters (9 sequences each) in the val split.
    """

    factors = (
        Factor("skin", sio.N_OPTIONS, True),
        Factor("pants", sio.N_OPTIONS, True),
        Factor("top", sio.N_OPTIONS, True),
        Factor("hair", sio.N_OPTIONS, True),
        Factor("action", sio.N_MOTIONS, False),
    )
    n_channels = 3
    n_frames = sio.N_FRAMES
    frame_size = sio.TILE

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        drop_last: bool = True,
        sheets_dir: str | None = None,
        npy_dir: str | None = None,
        cache_dir: str | None = None,
        download: bool = False,
        n_characters: int | None = None,
        val: Literal["holdout", "test"] = "holdout",
        val_characters: int = 50,
    ):
        super().__init__(batch_size=batch_size, drop_last=drop_last, eval_batch_size=eval_batch_size)
        if n_characters is not None and n_characters <= 0:
            raise ValueError(f"data.n_characters must be a positive integer or null, got {n_characters}")
        if val not in ("holdout", "test"):
            raise ValueError(f"data.val must be 'holdout' or 'test', got {val!r}")
        limit = sio.N_TRAIN_CHARACTERS - 1 if val == "holdout" else sio.N_CHARACTERS - sio.N_TRAIN_CHARACTERS
        if not 1 <= val_characters <= limit:
            raise ValueError(
                f"data.val_characters must be in [1, {limit}] with data.val={val!r}, got {val_characters}"
            )
        self.save_hyperparameters()
        self.sheets_dir, self.npy_dir, self.download = sheets_dir, npy_dir, download
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else sio._default_cache_dir()
        self.n_characters, self.val, self.val_characters = n_characters, val, val_characters
        self.plan = self.split_plan()
        self._sources: dict[str, _Source] | None = None
        self._rows: dict[str, torch.Tensor] = {}  # split -> rows of its source table
        self._rows_on: dict[tuple[str, str], torch.Tensor] = {}

    # -- which characters each split holds -------------------------------------------------------
    def split_plan(self) -> dict[str, tuple[str, np.ndarray]]:
        """split -> (source array "train"|"test", character ids in seed-423 order)."""
        chars = sio.character_split()
        v = self.val_characters
        if self.val == "holdout":
            plan = {"train": ("train", chars["train"][:-v]), "val": ("train", chars["train"][-v:])}
        else:
            plan = {"train": ("train", chars["train"]), "val": ("test", chars["test"][:v])}
        plan["test"] = ("test", chars["test"])
        k = self.n_characters
        return {s: (src, c[:k] if k else c) for s, (src, c) in plan.items()}

    def _full_rows(self, src_char: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """source -> split -> rows (in the source's published order) of that split's characters."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for split, (src, chars) in self.plan.items():
            out.setdefault(src, {})[split] = np.flatnonzero(np.isin(src_char[src], chars))
        return out

    @property
    def cache_path(self) -> Path:
        small = f"n{self.n_characters}-{self.val}{self.val_characters}"
        spec = "full" if self.n_characters is None else small  # a small build is cached apart
        return self.cache_dir / "sprites" / f"v{sio.BUILD_VERSION}-{sio.sheets_key()}-{spec}"

    # -- loading ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download the sheets and build the cache once (rank 0 only under DDP)."""
        if self.npy_dir is None and not sio.cache_is_complete(self.cache_path, ("train_x", "test_x")):
            self._load_sources()

    def _load_sources(self) -> dict[str, _Source]:
        if self._sources is not None:
            return self._sources
        if self.npy_dir is not None:
            sources = self._from_npy(Path(self.npy_dir).expanduser())
        else:
            sources = self._from_sheets()
        for split, (src, chars) in self.plan.items():
            rows = np.flatnonzero(np.isin(sources[src].char, chars))
            if rows.size == 0:
                raise ValueError(
                    f"Sprites {split} split is empty: no sequence of the {src} array is one of its characters"
                )
            self._rows[split] = torch.from_numpy(rows)
        self._sources = sources
        return sources

    def _from_sheets(self) -> dict[str, _Source]:
        order = sio.published_order()
        src_char = {s: c for s, (c, _) in order.items()}
        keep = {s: np.unique(np.concatenate(list(r.values()))) for s, r in self._full_rows(src_char).items()}
        names = [f"{s}_x" for s in keep]
        arrays = sio.read_cache(self.cache_path, names)
        if arrays is None:
            sheets_dir = sio.resolve_sheets_dir(self.sheets_dir, self.download)
            layers = sio.Layers(sio.ensure_sheets(sheets_dir, self.download))
            full = self.n_characters is None
            log.info("Building Sprites from %s into %s", sheets_dir, self.cache_path)
            arrays = {
                f"{s}_x": sio.render_sequences(layers, order[s][0][r], order[s][1][r], progress=full)
                for s, r in keep.items()
            }
            sio.write_cache(self.cache_path, arrays)
        return {
            s: _Source(arrays[f"{s}_x"], sio.sequence_labels(order[s][0][r], order[s][1][r]), order[s][0][r])
            for s, r in keep.items()
        }

    def _from_npy(self, npy_dir: Path) -> dict[str, _Source]:
        published = sio.character_split()
        read = {s: sio.read_sprites_npy(npy_dir, s) for s in ("train", "test")}
        for s, (_, char, _) in read.items():
            stray = np.setdiff1d(char, published[s])
            if stray.size:
                raise ValueError(
                    f"{npy_dir / sio.NPY_NAMES['a'].format(split=s)}: holds characters {stray[:5].tolist()} that "
                    f"are not in the published {s} split (seed 423); expected the standard 1000/296 split"
                )
        src_char = {s: char for s, (_, char, _) in read.items()}
        keep = {s: np.unique(np.concatenate(list(r.values()))) for s, r in self._full_rows(src_char).items()}
        return {s: _Source(read[s][2](r), read[s][0][r], read[s][1][r]) for s, r in keep.items()}

    # -- IndexedDataModule --------------------------------------------------------------------------
    def _build(self, split: str) -> int:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {self.splits}")
        self._load_sources()
        return len(self._rows[split])

    def materialize(self, split: str, index: torch.Tensor) -> dict:
        # index: (B,) rows of the split, on the target device; no host syncs below
        src = self._load_sources()[self.plan[split][0]]
        x_table, label_table = src.to(index.device)
        key = (split, str(index.device))
        if key not in self._rows_on:
            self._rows_on[key] = self._rows[split].to(index.device)
        rows = self._rows_on[key][index]
        # index_select copies whole rows (memcpy-like); x_table[rows] is ~20x slower on CPU for uint8
        x = x_table.index_select(0, rows).to(torch.float32).mul_(1 / 256)  # (B, T, C, H, W); exact: 2^-8
        return {"x": x, "labels": label_table.index_select(0, rows)}  # labels: (B, T, 5)

    # -- extras ---------------------------------------------------------------------------------------
    def split_characters(self, split: str) -> np.ndarray:
        """(N,) character id of each sequence of `split`, in row order."""
        src = self._load_sources()[self.plan[split][0]]
        return src.char[self._rows[split].numpy()]

    def export_npy(self, out_dir: str | os.PathLike) -> None:
        """Write the loaded train/test arrays in the peers' layout (sprites_{X,A,D}_{train,test}.npy)."""
        for name, src in self._load_sources().items():
            sio.write_sprites_npy(out_dir, name, src.x.numpy(), src.labels.numpy())
