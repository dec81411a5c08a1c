"""Shared pieces of the in-memory DataModules (Moving dSprites, Sprites).

Design: a split is a table that lives in memory (and on the GPU when training there). The DataLoader
only yields *indices* (no per-item Python work, no worker processes); the DataModule turns them into
a batch on the device in `on_after_batch_transfer`, by indexing the table (Sprites) or by rendering
frames from labels (Moving dSprites). Lightning still injects its DistributedSampler, so DDP ranks see
disjoint indices.

Batch contract (every DataModule, every model and metric relies on it):
    batch["x"]:      (B, T, C, H, W) float32 in [0, 1]
    batch["labels"]: (B, T, F) int64 per-frame factor labels, ordered as `datamodule.factors`
                     (absent for unlabelled data)
    batch["index"]:  (B,) int64 row of the split table
    batch["split"]:  "train" | "val" | "test"
Datasets may add more keys (e.g. the dSprites paired twins `x_same_dyn`, `labels_same_dyn`, ...).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from sdcd.data_modules.sampling import ResumableDataLoader


@dataclass(frozen=True)
class Factor:
    """One labelled factor of variation."""

    name: str
    n_classes: int
    static: bool  # constant over a sequence (True) or varying per frame (False)
    ordinal: bool = False  # ordered classes (scale, position, ...): R² is meaningful


class IndexDataset(Dataset):
    """Yields row indices of a split table; `__getitems__` makes the DataLoader fetch whole batches."""

    def __init__(self, n: int, split: str):
        self.n, self.split = n, split

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i

    def __getitems__(self, indices: list[int]) -> dict:
        return {"index": torch.as_tensor(indices, dtype=torch.long), "split": self.split}


def _identity(batch):
    return batch


class IndexedDataModule(LightningDataModule):
    """Base for DataModules whose splits are tables assembled into batches on the device.

    Subclasses implement `_build(split) -> int` (prepare the split's tables, return its size) and
    `materialize(split, index) -> dict` (the batch for those rows, on `index.device`).
    """

    factors: tuple[Factor, ...] = ()
    splits = ("train", "val", "test")

    def __init__(self, batch_size: int = 64, drop_last: bool = True, eval_batch_size: int | None = None):
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"data.batch_size must be a positive integer, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.drop_last = drop_last
        self._sizes: dict[str, int] = {}

    # -- to implement ----------------------------------------------------------------------
    def _build(self, split: str) -> int:
        raise NotImplementedError

    def materialize(self, split: str, index: torch.Tensor) -> dict:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    @property
    def static_factors(self) -> list[Factor]:
        return [f for f in self.factors if f.static]

    @property
    def dynamic_factors(self) -> list[Factor]:
        return [f for f in self.factors if not f.static]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, self.splits) if stage else self.splits:
            if split not in self._sizes:
                self._sizes[split] = self._build(split)

    def split_size(self, split: str) -> int:
        if split not in self._sizes:
            self._sizes[split] = self._build(split)
        return self._sizes[split]

    def _loader(self, split: str, shuffle: bool, batch_size: int, drop_last: bool) -> DataLoader:
        n = self.split_size(split)
        if drop_last and batch_size > n:
            raise ValueError(
                f"data.batch_size={batch_size} is larger than the {split} split ({n} sequences) with "
                f"drop_last=True: every batch would be dropped. Use a smaller batch or more data."
            )
        # the training order is a function of (seed, epoch) and resumes mid-epoch (see ResumableDataLoader)
        loader = ResumableDataLoader if split == "train" else DataLoader
        return loader(
            IndexDataset(n, split),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=_identity,
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size, self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size, False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and "index" in batch and "x" not in batch:
            out = self.materialize(batch["split"], batch["index"])
            out.setdefault("index", batch["index"])
            out.setdefault("split", batch["split"])
            return out
        return batch

    def batch(self, split: str, index: torch.Tensor | list[int], device: torch.device | str = "cpu") -> dict:
        """The batch for rows `index` of `split`, materialised on `device` (for scripts and tests)."""
        self.split_size(split)
        index = torch.as_tensor(index, dtype=torch.long, device=device)
        out = self.materialize(split, index)
        out.setdefault("index", index)
        out.setdefault("split", split)
        return out


# Data module init args that change how batches are served, not what the data are.
_NON_DATA_KEYS = frozenset(
    {
        "batch_size",
        "eval_batch_size",
        "drop_last",
        "num_workers",
        "pin_memory",
        "persistent_workers",
        "device",
        "render_device",
        "data_dir",
        "root",
        "cache_dir",
        "download",
    }
)


def _plain(v: Any) -> Any:
    """A JSON-like copy of a config value (tuples -> lists, paths -> str) for judge files and checkpoints."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    if isinstance(v, dict):
        return {str(k): _plain(u) for k, u in v.items()}
    return str(v)


def data_signature(datamodule: Any) -> dict[str, Any]:
    """The data-defining config of `datamodule`, recorded in a judge file and checked by `load_judge`.

    It is the data module's class plus its init args (`hparams`, or the `__init__` parameters read
    back as attributes), minus those that only change how data are served (batch sizes, workers,
    `*_dir` folders; a `*_path` file is recorded by its name), plus the factor list and the size of
    every split (this builds the splits). A data module may define its own `data_signature()` to
    replace the init-arg part.
    """
    cls = type(datamodule)
    sig: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    own = getattr(datamodule, "data_signature", None)
    if callable(own):
        sig.update(own())
    else:
        hp = dict(getattr(datamodule, "hparams", {}) or {})
        if not hp:
            for name in inspect.signature(cls.__init__).parameters:
                if name != "self" and hasattr(datamodule, name):
                    hp[name] = getattr(datamodule, name)
        for k, v in hp.items():
            if k in _NON_DATA_KEYS or k.startswith("_") or k.endswith("_dir"):
                continue  # serving options and folders: where data live, not what they are
            # a file that selects the data source (e.g. dSprites npz_path): its name, not its location
            sig[k] = Path(v).name if k.endswith("_path") and v is not None else v
    sig["factors"] = [dataclasses.asdict(f) for f in getattr(datamodule, "factors", ())]
    if callable(getattr(datamodule, "split_size", None)):  # the sizes as built, whatever the arg names
        sig["split_sizes"] = {s: int(datamodule.split_size(s)) for s in getattr(datamodule, "splits", ())}
    return _plain(sig)
