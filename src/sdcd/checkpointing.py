"""Checkpoints: written atomically, checked before they are loaded, and found from `--ckpt_path`.

- `AtomicCheckpointIO`: the CheckpointIO plugin of every run; writes each checkpoint through
  `sdcd.io.atomic_torch_save`, so a crash while saving leaves the previous file intact.
- `describe_run`: the metadata `CheckpointMetadata` (sdcd.callbacks.reproducibility) records in every
  checkpoint: experiment, model and data classes, data signature, judge reference.
- `check_checkpoint`: refuses a checkpoint from another experiment, model class, data class or an
  incompatible model config, naming the mismatch (before Lightning's cryptic size-mismatch error).
- `resolve_ckpt_path`: what `--ckpt_path` means in this project ("last", a run directory, a file).
- `keep_previous_metrics`: a resumed run keeps the metrics.csv it logged before.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from sdcd.data_modules.base import data_signature
from sdcd.io import atomic_torch_save, file_sha256

META_KEY = "sdcd"  # top-level checkpoint entry written by CheckpointMetadata
META_VERSION = 1
LIGHTNING_SPECIAL_PATHS = ("best", "hpc")  # --ckpt_path values Lightning resolves itself
SHAPE_DIFFS_SHOWN = 5


# SDCD model arguments of older sdcd versions that said how to evaluate (now the `evaluation:` group):
# accepted in old checkpoints and ignored; in old config files read as that group (name there).
LEGACY_EVAL_ARGS = {"judge_path": "judge_path", "eval_repeats": "repeats", "eval_every_n_epochs": "every_n_epochs",
                    "eval_val_sequences": "val_sequences", "peers_protocol": "peers_protocol", "eval_probes": "probes"}


def is_sdcd(class_path: str | None) -> bool:
    """Whether a class path (short or full) names SDCD, the model whose old checkpoints and configs
    carry `LEGACY_EVAL_ARGS` (other models, e.g. JudgeModule, have a `judge_path` of their own)."""
    return class_path in ("SDCD", "sdcd.model.SDCD")


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


def class_path(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_run(module: LightningModule, datamodule: Any | None, experiment: str | None,
                 judge_path: str | None = None) -> dict[str, Any]:
    """What `CheckpointMetadata` writes into `checkpoint["sdcd"]` (see there)."""
    return {
        "version": META_VERSION,
        "experiment": experiment,
        "model_class": class_path(module),
        "data_class": class_path(datamodule) if datamodule is not None else None,
        "data_signature": data_signature(datamodule) if datamodule is not None else None,
        "judge": {"path": str(judge_path), "sha256": file_sha256(judge_path)} if judge_path else None,
    }


def _shape_differences(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor],
                       optional: tuple[str, ...] = ()) -> list[str]:
    """`optional`: prefixes of state the module adds or drops itself when loading (its on_load_checkpoint)."""
    saved = {k: v for k, v in saved.items() if not k.startswith(optional) or k in current}
    current = {k: v for k, v in current.items() if not k.startswith(optional) or k in saved}
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
    saved = dict(checkpoint.get("hyper_parameters") or {})
    if is_sdcd(class_path(module)):  # an older SDCD's evaluation arguments are not model settings
        saved = {k: v for k, v in saved.items() if k not in LEGACY_EVAL_ARGS}
    hparams = _differing(saved, dict(getattr(module, "hparams", {})))
    shapes = _shape_differences(checkpoint.get("state_dict") or {}, module.state_dict(),
                                tuple(getattr(module, "optional_state", ())))
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


def newest_last(folder: str | os.PathLike) -> Path | None:
    """The newest `last.ckpt` or `last-v<N>.ckpt` in `folder`, or None. A config with two ModelCheckpoints
    (one at epoch ends, one every few hundred steps for mid-epoch resumes) gets `last.ckpt` and Lightning's
    versioned `last-v1.ckpt`; after an interruption the newer of the two is where the run stopped."""
    found = [p for p in Path(folder).glob("last*.ckpt")
             if p.is_file() and (p.stem == "last" or re.fullmatch(r"last-v\d+", p.stem))]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _last_in(folder: Path) -> Path | None:
    return newest_last(folder / "checkpoints") or newest_last(folder)


def resolve_ckpt_path(value: str | None, experiment: str, root: str | os.PathLike = "runs",
                      stage: str = "fit", run_dir: str | os.PathLike | None = None) -> str | None:
    """What `--ckpt_path` means here, as a checkpoint file path (or None: start from scratch).

    - None: None.
    - "last": with `run_dir` (a run directory fixed in advance, `SDCD_RUN_DIR`: a SLURM or torchrun
      job, DDP children), that run's `checkpoints/last.ckpt`; else the `checkpoints/last.ckpt` of the
      run of `experiment` under `root` written most recently (runs/<experiment>/*/checkpoints/). "last.ckpt"
      here and below is the newest of `last.ckpt` and a mid-epoch `last-v<N>.ckpt` (`newest_last`). With
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
        found = [p for d in where.parent.glob(where.name) if (p := newest_last(d / "checkpoints"))]
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
