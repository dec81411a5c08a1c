"""The one entry point: `python -m sdcd {fit,validate,test,predict} --config experiments/<name>.yaml [overrides]`.

A LightningCLI in subclass mode: model and data are chosen by `class_path` in the YAML, and any
`__init__` argument is overridable (`--model.kl_weight=0.5`, `--data.batch_size=32`).
"""

from __future__ import annotations

import os

import torch
from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from sdcd.callbacks.shuffle import ShuffleCallback


class SDCDCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The shuffle schedule is a top-level group (`shuffle:` in YAML, `--shuffle.every=0` on the
        # command line, `shuffle.every` in sweeps) instead of an entry of trainer.callbacks, whose
        # list items cannot be overridden reliably from the command line.
        parser.add_lightning_class_args(ShuffleCallback, "shuffle")

    def before_instantiate_classes(self) -> None:
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")  # TF32 matmuls: same results to ~1e-3, much faster


def main(args: list[str] | None = None, run: bool = True) -> SDCDCLI:
    os.environ.setdefault("WANDB_SILENT", "true")
    return SDCDCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # configs always set seed_everything explicitly; this default only applies without a config
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": False},
        args=args,
        run=run,
    )
