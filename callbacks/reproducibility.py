"""Exact resume and honest records: random states and run metadata in every checkpoint.

- `RNGStateCallback`: saves the random states of every process (torch, CUDA, numpy, Python and the
  model's own `torch.Generator`s) and puts them back when training resumes; in a fresh multi-process
  run it seeds each rank's global RNGs from (seed, rank), so per-rank noise differs, reproducibly.
- `CheckpointMetadata`: records the experiment, the model and data classes, the data signature and
  the judge reference (path + SHA-256, never its weights) in every checkpoint (`sdcd.checkpointing`
  reads it back to refuse checkpoints that do not belong).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from sdcd.callbacks.evaluation import evaluation_callback
from sdcd.checkpointing import META_KEY, describe_run
from sdcd.data_modules.sampling import global_seed, rank_seed

RNG_KEY = "sdcd_rng"  # top-level checkpoint entry written by RNGStateCallback


def _module_generators(module: torch.nn.Module) -> dict[str, torch.Generator]:
    """The `torch.Generator` attributes of a module (e.g. SDCD.shuffle_generator), by name."""
    return {k: v for k, v in vars(module).items() if isinstance(v, torch.Generator)}


def collect_rng_states(module: torch.nn.Module | None = None) -> dict[str, Any]:
    """This process's random states, as plain types and tensors (loadable with weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    generators = _module_generators(module) if module is not None else {}
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any], module: torch.nn.Module | None = None) -> None:
    """Put back what `collect_rng_states` returned."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)
    generators = _module_generators(module) if module is not None else {}
    for name, state in states.get("generators", {}).items():
        if name in generators:
            generators[name].set_state(state)


def seed_process(seed: int) -> None:
    """Seed this process's global torch (CPU and every CUDA device), numpy and Python RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class RNGStateCallback(Callback):
    """Random states in checkpoints, for an exact resume; per-rank seeds in a fresh DDP run.

    Saving gathers every rank's states (so `Trainer.save_checkpoint` must run on every rank, as
    Lightning requires anyway). When training starts from a checkpoint, each rank gets its own saved
    states back (with another number of processes, rank r takes those of rank r mod n, with a
    warning). A fresh run with several processes seeds rank r's global RNGs with
    `rank_seed(seed, r)`: `seed_everything` gives every rank the same seed, so feature noise would
    otherwise be identical on all ranks. One process keeps the `seed_everything` stream untouched.
    The model's own generators are saved and restored, but seeding them is the model's business.

    States are applied in `on_train_start`: after the sanity check (which Lightning isolates) and
    before the first batch, the point where the interrupted run stood when it saved. Validation
    during fit is isolated the same way (its draws are undone at `on_validation_end`, before
    ModelCheckpoint saves there), so training draws the same numbers whether or not a resumed run
    repeats a validation.
    """

    def __init__(self) -> None:
        self._saved: list[dict[str, Any]] | None = None
        self._before_validation: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        states = collect_rng_states(pl_module)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, states)
            checkpoint[RNG_KEY] = gathered
        else:
            checkpoint[RNG_KEY] = [states]

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != "fit":  # evaluating a checkpoint: its states are of no use
            return
        self._saved = checkpoint.get(RNG_KEY)
        if self._saved is None:
            rank_zero_warn("the checkpoint holds no random states (saved without RNGStateCallback): "
                           "the resumed run will not repeat the interrupted one exactly")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        saved, self._saved = self._saved, None
        if saved:
            if len(saved) != trainer.world_size:
                rank_zero_warn(f"random states were saved by {len(saved)} processes and training resumes on "
                               f"{trainer.world_size}: rank r takes those of rank r mod {len(saved)}")
            set_rng_states(saved[trainer.global_rank % len(saved)], pl_module)
        elif trainer.world_size > 1:
            seed_process(rank_seed(global_seed(), trainer.global_rank))

    # Validation during fit runs on a side stream: whether it runs (a run resumed from a checkpoint
    # saved on an epoch's last batch skips that epoch's validation) never changes training's draws.
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._before_validation = collect_rng_states(pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._before_validation is not None:
            set_rng_states(self._before_validation, pl_module)
            self._before_validation = None


class CheckpointMetadata(Callback):
    """Writes `checkpoint["sdcd"]`: what evaluating or resuming a checkpoint needs besides the weights.

        experiment      the experiment name (runs/<experiment>/...), None outside the CLI
        model_class     e.g. "sdcd.model.SDCD"
        data_class      e.g. "sdcd.data_modules.dsprites.MovingDSpritesDataModule"
        data_signature  `sdcd.data_modules.base.data_signature(datamodule)`: the data-defining config
        judge           {"path", "sha256"} of evaluation.judge_path (never the judge's weights)
        world_size      processes that trained it

    Computed once, at the first save. `check_checkpoint` reads it back.

    Args:
        experiment: the experiment name (the CLI passes `--experiment_name`).
    """

    def __init__(self, experiment: str | None = None):
        self.experiment = experiment
        self._meta: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if self._meta is None:
            evaluation = evaluation_callback(trainer)
            judge = evaluation.judge_path if evaluation is not None else None
            self._meta = describe_run(pl_module, trainer.datamodule, self.experiment, judge)
        checkpoint[META_KEY] = {**self._meta, "world_size": trainer.world_size}


class Reproducibility(RNGStateCallback):
    """The CLI's `reproducibility:` group: random states (`RNGStateCallback`) and run metadata
    (`CheckpointMetadata`) in every checkpoint, so that a resumed run repeats the interrupted one and
    a checkpoint can be checked against the run that loads it.

    Args:
        rng_states: Save the random states and restore them on resume (exact resume); false resumes
            with fresh random streams.
        experiment: The experiment name recorded in checkpoints; the CLI sets it from
            `experiment_name` when left unset.
    """

    def __init__(self, rng_states: bool = True, experiment: str | None = None):
        super().__init__()
        self.rng_states = rng_states
        self.metadata = CheckpointMetadata(experiment)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if self.rng_states:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
        self.metadata.on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if self.rng_states:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.rng_states:
            super().on_train_start(trainer, pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.rng_states:
            super().on_validation_start(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.rng_states:
            super().on_validation_end(trainer, pl_module)
