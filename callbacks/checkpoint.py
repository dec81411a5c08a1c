"""Reliable checkpoints: atomic writes, exact resume, and refusal of checkpoints that do not belong.

- `AtomicCheckpointIO`: writes every checkpoint to a temp file in the target folder, fsyncs it and
  renames it into place, so a crash while saving leaves the previous file intact.
- `RNGStateCallback`: saves the random states of every process (torch, CUDA, numpy, Python and the
  model's own `torch.Generator`s) and puts them back when training resumes; in a fresh multi-process
  run it seeds each rank's global RNGs from (seed, rank), so per-rank noise differs, reproducibly.
- `CheckpointMetadata`: records the experiment, the model and data classes, the data signature and
  the judge reference (path + SHA-256, never its weights) in every checkpoint.
- `check_checkpoint`: refuses a checkpoint from another experiment, model class, data class or an
  incompatible model config, naming the mismatch (before Lightning's cryptic size-mismatch error).
- `resolve_ckpt_path`: what `--ckpt_path` means in this project ("last", a run directory, a file).
- `EpochRandomSampler` and `ResumableDataLoader`: a training order that is a function of
  (seed, epoch), and a loader Lightning checkpoints mid-epoch, so a resumed run sees the same batches.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, RandomSampler

from sdcd.io import atomic_torch_save, file_sha256

META_KEY = "sdcd"  # top-level checkpoint entry written by CheckpointMetadata
RNG_KEY = "sdcd_rng"  # top-level checkpoint entry written by RNGStateCallback
META_VERSION = 1
LIGHTNING_SPECIAL_PATHS = ("best", "hpc")  # --ckpt_path values Lightning resolves itself
SHAPE_DIFFS_SHOWN = 5


# ---------------------------------------------------------------------------------------------- atomic IO
class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that never leaves a half-written checkpoint.

    The checkpoint goes to a hidden temp file next to the target (`.<name>.<random>.tmp`), is flushed
    and fsynced, then renamed over the target with `os.replace` (atomic on POSIX and Windows), and the
    folder is fsynced. On an error the temp file is removed; a temp file left by a killed process is
    removed by the next save of the same checkpoint. Remote paths (s3://, ...) use the stock writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


# ---------------------------------------------------------------------------------------------- RNG states
def rank_seed(seed: int, rank: int) -> int:
    """A 63-bit seed for process `rank` of a run seeded with `seed` (independent streams per rank)."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def global_seed() -> int:
    """The run's seed as `seed_everything` recorded it (PL_GLOBAL_SEED), 0 if it was never called."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


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


# ---------------------------------------------------------------------------------------------- metadata
def class_path(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class CheckpointMetadata(Callback):
    """Writes `checkpoint["sdcd"]`: what evaluating or resuming a checkpoint needs besides the weights.

        experiment      the experiment name (runs/<experiment>/...), None outside the CLI
        model_class     e.g. "sdcd.model.SDCD"
        data_class      e.g. "sdcd.data_modules.dsprites.MovingDSpritesDataModule"
        data_signature  `sdcd.judge.data_signature(datamodule)`: the data-defining config
        judge           {"path", "sha256"} of the model's judge_path (never the judge's weights)
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
            self._meta = describe_run(pl_module, trainer.datamodule, self.experiment)
        checkpoint[META_KEY] = {**self._meta, "world_size": trainer.world_size}


def describe_run(module: LightningModule, datamodule: Any | None, experiment: str | None) -> dict[str, Any]:
    from sdcd.judge import data_signature  # not at import time: sdcd.judge imports the data modules

    judge_path = getattr(module, "hparams", {}).get("judge_path")
    return {
        "version": META_VERSION,
        "experiment": experiment,
        "model_class": class_path(module),
        "data_class": class_path(datamodule) if datamodule is not None else None,
        "data_signature": data_signature(datamodule) if datamodule is not None else None,
        "judge": {"path": str(judge_path), "sha256": file_sha256(judge_path)} if judge_path else None,
    }


# ---------------------------------------------------------------------------------------------- refusal
def _shape_differences(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> list[str]:
    out = [
        f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(v.shape)}"
        for k, v in current.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    out += [f"{k}: missing from the checkpoint" for k in current if k not in saved]
    return out + [f"{k}: in the checkpoint, not in the model" for k in saved if k not in current]


def _differing(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    keys = sorted(set(saved) | set(current))
    unset = "<unset>"
    return {k: (saved.get(k, unset), current.get(k, unset)) for k in keys if saved.get(k) != current.get(k)}


def _listing(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())


def check_checkpoint(
    checkpoint: dict,
    module: LightningModule,
    datamodule: Any | None = None,
    experiment: str | None = None,
    path: str | os.PathLike | None = None,
    stage: str = "fit",
) -> None:
    """Refuse (ValueError) a checkpoint that does not belong to this run, naming the mismatch.

    Refused: another experiment (when both names are known), another model class, another data
    class, or model weights whose names or shapes differ from `module`'s (the message lists the
    model settings that differ, e.g. `latent_dim`). Warned about when resuming (`stage="fit"`): other
    model settings that differ without changing shapes, and a data signature that differs (the
    resumed run then cannot repeat the interrupted one). A checkpoint without `CheckpointMetadata`
    (plain Lightning) gets the shape check only.

    Args:
        checkpoint: the loaded checkpoint dict.
        module: the model the weights are about to be loaded into.
        datamodule: the data it will run on (None skips the data checks).
        experiment: this run's experiment name (None skips that check).
        path: the checkpoint's path, for messages.
        stage: "fit", "validate", "test" or "predict".
    """
    name = f"checkpoint '{path}'" if path else "the checkpoint"
    meta = checkpoint.get(META_KEY) or {}
    theirs = meta.get("experiment")
    if experiment and theirs and theirs != experiment:
        raise ValueError(
            f"{name} belongs to experiment '{theirs}', but this run is experiment '{experiment}'. "
            f"Use its config (experiments/{theirs}.yaml, or config.yaml in its run directory), or pass "
            f"--experiment_name={theirs} if that experiment's config was renamed."
        )
    for what, saved, current in (("model", meta.get("model_class"), class_path(module)),
                                 ("data", meta.get("data_class"), datamodule and class_path(datamodule))):
        if saved and current and saved != current:
            raise ValueError(f"{name} was trained with {what} class {saved}, but this run's {what} is "
                             f"{current}")
    if datamodule is not None and hasattr(module, "build_for"):  # weights made from the data (JudgeModule)
        module.build_for(datamodule, stage)
    hparams = _differing(dict(checkpoint.get("hyper_parameters") or {}), dict(getattr(module, "hparams", {})))
    shapes = _shape_differences(checkpoint.get("state_dict") or {}, module.state_dict())
    if shapes:
        shown = "; ".join(shapes[:SHAPE_DIFFS_SHOWN])
        if len(shapes) > SHAPE_DIFFS_SHOWN:
            shown += f"; ... ({len(shapes)} in all)"
        settings = _listing(hparams) or "none (the architecture code changed)"
        raise ValueError(
            f"{name} does not fit this model config. Model settings that differ: {settings}. "
            f"Weights that differ: {shown}. Use the checkpoint's model settings (config.yaml in its run "
            f"directory) or start a new run without --ckpt_path."
        )
    if stage != "fit":
        return
    if hparams:
        rank_zero_warn(f"resuming {name} with other model settings: {_listing(hparams)}")
    if datamodule is not None and meta.get("data_signature") is not None:
        from sdcd.judge import data_signature

        data = _differing(meta["data_signature"], data_signature(datamodule))
        if data:
            rank_zero_warn(f"resuming {name} on other data settings ({_listing(data)}): the resumed run "
                           "will not see the batches the interrupted run would have seen")


def load_checkpoint_for_check(path: str | os.PathLike) -> dict:
    """The checkpoint at `path`, memory-mapped (cheap: tensors are read only where touched)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise ValueError(f"checkpoint '{path}' is not readable ({type(err).__name__}: {str(err)[:200]}); "
                         "expected a .ckpt file written by Lightning (truncated or corrupted?)") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"'{path}' is not a Lightning checkpoint (expected a dict with a state_dict)")
    return checkpoint


# ---------------------------------------------------------------------------------------------- --ckpt_path
def run_dir_of(ckpt_path: str | os.PathLike) -> Path | None:
    """The run directory holding a checkpoint (`<run dir>/checkpoints/<file>`), else None."""
    parent = Path(ckpt_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else None


def _last_in(folder: Path) -> Path | None:
    for candidate in (folder / "checkpoints" / "last.ckpt", folder / "last.ckpt"):
        if candidate.is_file():
            return candidate
    return None


def resolve_ckpt_path(value: str | None, experiment: str, root: str | os.PathLike = "runs",
                      stage: str = "fit", run_dir: str | os.PathLike | None = None) -> str | None:
    """What `--ckpt_path` means here, as a checkpoint file path (or None: start from scratch).

    - None: None.
    - "last": with `run_dir` (a run directory fixed in advance, `SDCD_RUN_DIR`: a SLURM or torchrun
      job, DDP children), that run's `checkpoints/last.ckpt`; else the `checkpoints/last.ckpt` of the
      run of `experiment` under `root` written most recently (runs/<experiment>/*/checkpoints/). With
      none, `fit` starts from scratch (so "last" can stay in a job script that is requeued) and other
      stages raise.
    - a run directory (or its `checkpoints/` folder): its last.ckpt.
    - a file: itself.
    - "best", "hpc", "registry:...": unchanged, for Lightning.

    Raises FileNotFoundError naming the path and what was expected.
    """
    if value is None or value in LIGHTNING_SPECIAL_PATHS or str(value).startswith("registry:"):
        return value
    if value == "last":
        where = Path(run_dir) if run_dir else Path(root) / experiment / "*"
        found = [p for p in where.parent.glob(f"{where.name}/checkpoints/last.ckpt") if p.is_file()]
        if found:
            return str(max(found, key=lambda p: p.stat().st_mtime))
        if stage == "fit":
            rank_zero_info(f"--ckpt_path=last: no {where}/checkpoints/last.ckpt yet: starting a new run")
            return None
        what = f"run {run_dir}" if run_dir else f"run of experiment '{experiment}'"
        raise FileNotFoundError(f"--ckpt_path=last: no {what} has a checkpoints/last.ckpt ({where}/)")
    path = Path(value).expanduser()
    if path.is_dir():
        last = _last_in(path)
        if last is None:
            raise FileNotFoundError(f"--ckpt_path={value}: the folder has no checkpoints/last.ckpt or "
                                    "last.ckpt; expected a run directory (runs/<experiment>/<run id>), its "
                                    "checkpoints/ folder or a .ckpt file")
        return str(last)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path={value}: no such file or folder; expected a .ckpt file, a run "
                                f"directory (runs/<experiment>/<run id>) or 'last'")
    return str(path)


def keep_previous_metrics(run_dir: str | os.PathLike) -> Path | None:
    """Rename `<run dir>/metrics.csv` to `metrics.<k>.csv` (first free k) before a resumed run reuses the
    folder: Lightning's CSVLogger deletes an existing metrics.csv when it starts. Returns the new name."""
    old = Path(run_dir) / "metrics.csv"
    if not old.is_file():
        return None
    k = 1
    while (new := old.with_name(f"metrics.{k}.csv")).exists():
        k += 1
    os.replace(old, new)
    return new


# ---------------------------------------------------------------------------------------------- data order
class EpochRandomSampler(RandomSampler):
    """A random order that is a function of (seed, epoch): the permutation `DistributedSampler` uses with
    one process (`randperm(n)` from a generator seeded with seed + epoch).

    Lightning calls `set_epoch` at every epoch start; under DDP it swaps this sampler for a
    `DistributedSampler` with the same seed (it is a `RandomSampler`), which is deterministic too.

    Args:
        data_source: the dataset.
        seed: default: the run's seed (`PL_GLOBAL_SEED`, set by `seed_everything`), read when built.
    """

    def __init__(self, data_source, seed: int | None = None):
        super().__init__(data_source)
        self.seed = global_seed() if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=g).tolist())


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position inside an epoch is saved in checkpoints and restored on resume.

    Lightning stores `state_dict()` (the epoch and the number of batches served in it) in the fit loop's
    checkpoint state and calls `load_state_dict` before iterating again; the next pass over the same
    epoch then skips the batches already served. With `shuffle=True` (and no sampler) the order comes
    from an `EpochRandomSampler`, so the skipped prefix is the one the interrupted run consumed.
    Skipping draws the batches and drops them: cheap for index datasets (`IndexDataset`), a full read
    otherwise. Only the training loader needs this (Lightning does not resume evaluation loaders).

    Args:
        seed: seeds the order and the worker base seeds; default: the run's seed (`PL_GLOBAL_SEED`).
        Others: as `DataLoader` (`shuffle=True` without a sampler uses an `EpochRandomSampler`).
    """

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = None, sampler=None,
                 *, seed: int | None = None, **kwargs):
        self.seed = global_seed() if seed is None else int(seed)
        if shuffle and sampler is None:
            sampler, shuffle = EpochRandomSampler(dataset, self.seed), None
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, **kwargs)
        self._served = 0
        self._resume: tuple[int | None, int] | None = None

    def _epoch(self) -> int | None:
        epoch = getattr(self.sampler, "epoch", None)
        return int(epoch) if epoch is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch(), "served": self._served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (state["epoch"], int(state["served"]))

    def __iter__(self):
        return self._batches()

    def _batches(self):
        # a generator: runs at the first next(), after Lightning has called set_epoch
        skip, self._served = 0, 0
        if self._resume is not None:
            epoch, served = self._resume
            self._resume = None
            if epoch == self._epoch() and served < len(self):
                skip = served
        # A DataLoader iterator draws a worker base seed from `self.generator`, or else from the global
        # RNG, which would shift the model's random stream by one draw on resume: seed it per epoch.
        self.generator = torch.Generator().manual_seed(rank_seed(self.seed, self._epoch() or 0))
        for batch in super().__iter__():
            self._served += 1
            if self._served > skip:
                yield batch

