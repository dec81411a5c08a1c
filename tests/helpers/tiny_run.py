"""The tiny run that checkpointing, resume and DDP tests share: tests/configs/tiny.yaml, smaller."""

import warnings

import torch
import yaml
from conftest import CONFIGS
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from sdcd.callbacks.reproducibility import CheckpointMetadata, RNGStateCallback
from sdcd.callbacks.shuffle import ShuffleCallback
from sdcd.checkpointing import AtomicCheckpointIO
from sdcd.data_modules import base
from sdcd.data_modules.base import IndexDataset
from sdcd.data_modules.dsprites import MovingDSpritesDataModule
from sdcd.data_modules.sampling import ResumableDataLoader
from sdcd.model import SDCD


class Interrupted(RuntimeError):
    pass


TINY = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
SEED = TINY["seed_everything"]
MODEL = TINY["model"]["init_args"]


# the tiny data, smaller: 8 steps per epoch keeps three runs of 20 steps within a few seconds
DATA = {**TINY["data"]["init_args"], "n_train": 64, "n_val": 16, "n_test": 16, "batch_size": 8}


class ResumableTinyData(MovingDSpritesDataModule):
    """The tiny data with the resumable training loader (what base.py's `_loader` builds once it adopts
    ResumableDataLoader; this subclass is then redundant but harmless)."""

    def train_dataloader(self):
        n = self.split_size("train")
        return ResumableDataLoader(IndexDataset(n, "train"), batch_size=self.batch_size, shuffle=True,
                                   drop_last=self.drop_last, collate_fn=base._identity)


class CrashAt(Callback):
    """Kills the run in `on_train_batch_end` of `step` (before ModelCheckpoint could save that step)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Interrupted(f"killed at step {self.step}")


class Batches(Callback):
    """(global step, batch indices) of every training batch."""

    def __init__(self):
        self.seen: list[tuple[int, list[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.global_step, batch["index"].tolist()))


def fit(root, max_steps: int, *extra: Callback, ckpt_path=None, every: int = 2, rng: bool = True, **model_kw):
    """Fit the tiny model, checkpointing every `every` steps in `root`; returns (model, trainer, batches)."""
    seed_everything(SEED)
    model, data, batches = SDCD(**{**MODEL, **model_kw}), ResumableTinyData(**DATA), Batches()
    callbacks = [ShuffleCallback(every=3), CheckpointMetadata("tiny"), batches, *extra,
                 ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_last=True)]
    if rng:
        callbacks.insert(0, RNGStateCallback())
    trainer = Trainer(accelerator="cpu", max_steps=max_steps, callbacks=callbacks, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                      plugins=[AtomicCheckpointIO()], limit_val_batches=1, num_sanity_val_steps=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(exists and is not empty|does not have many workers).*")
        trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, trainer, batches


def assert_same_tensors(a, b, where=""):
    """Exact equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}/{i}")
    else:
        assert a == b, where
