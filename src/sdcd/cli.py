"""The entry point: `python -m sdcd {fit,validate,test,predict} --config experiments/<name>.yaml [overrides]`.

A LightningCLI in subclass mode: model and data are chosen by `class_path` in the YAML, and any
`__init__` argument is overridable (`--model.kl_weight=0.5`, `--data.batch_size=32`).

Each run gets its own directory `runs/<experiment>/<run id>/` (layout and logger choice: sdcd.runs),
printed once at the start. When the config leaves `trainer.logger` unset (or `true`), the run logs to
W&B (offline without credentials) plus a CSVLogger; `LOGGER=csv` or `--trainer.logger=...` swap that.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import yaml
from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from sdcd import runs
from sdcd.baselines import DBSE, DSVAE
from sdcd.callbacks.evaluation import EvaluationCallback
from sdcd.callbacks.reproducibility import Reproducibility
from sdcd.callbacks.shuffle import ShuffleCallback
from sdcd.callbacks.visual import VisualCallback
from sdcd.checkpointing import (
    LEGACY_EVAL_ARGS,
    AtomicCheckpointIO,
    check_checkpoint,
    is_sdcd,
    keep_previous_metrics,
    load_checkpoint_for_check,
    resolve_ckpt_path,
)
from sdcd.data_modules.dsprites import MovingDSpritesDataModule
from sdcd.data_modules.sprites import SpritesDataModule
from sdcd.data_modules.video import VideoClipDataModule
from sdcd.io import atomic_write_text
from sdcd.judge_training import JudgeModule
from sdcd.model import SDCD
from sdcd.precision import cpu_precision

# The classes configs name by their short class_path (`class_path: SDCD`): jsonargparse resolves a short
# name among the imported subclasses of the expected base class.
PUBLIC_CLASSES = (SDCD, DSVAE, DBSE, JudgeModule, MovingDSpritesDataModule, SpritesDataModule, VideoClipDataModule,
                  VisualCallback)


class RunWandbLogger(WandbLogger):
    """A WandbLogger that falls back to offline when an online start fails (timeout, rejected key)."""

    def __init__(self, *args, fallback_offline: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)  # Lightning always passes it; wandb warns it has no effect
        self._fallback_offline = fallback_offline

    @property
    def experiment(self):
        try:
            return WandbLogger.experiment.fget(self)
        except Exception as err:
            import wandb

            if not (self._fallback_offline and isinstance(err, wandb.errors.Error)):
                raise
            runs.say(f"W&B online start failed ({str(err).splitlines()[0]}); logging offline instead")
            runs.say(runs.sync_hint(Path(self.save_dir)))
            self._fallback_offline = False
            self._wandb_init["mode"] = "offline"
            return WandbLogger.experiment.fget(self)


def default_loggers(run_dir: Path, experiment: str, fast_dev_run: bool = False) -> list[Logger]:
    """The chosen logger first (so `trainer.log_dir` is the run dir), then a CSVLogger writing metrics.csv.

    Under fast_dev_run Lightning swaps every logger for a DummyLogger, so no W&B run is set up at all.
    """
    run_dir = Path(run_dir)
    # The run dir already holds wandb/ etc.; the CSV writer only removes an older metrics.csv there.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    # save_dir/name/version laid out so that log_dir == run_dir exactly
    csv = CSVLogger(save_dir=run_dir.parent, name="", version=run_dir.name)
    kind = runs.logger_kind()
    if fast_dev_run or kind == "csv":
        return [csv]
    if kind == "tensorboard":
        return [TensorBoardLogger(save_dir=run_dir.parent, name="", version=run_dir.name), csv]

    import wandb

    # only rank 0 starts a W&B run; the others skip the credential check and the network probe
    mode, why = runs.choose_wandb_mode() if runs.process_rank() == 0 else ("offline", "")
    kwargs: dict = {"mode": mode}
    if not os.environ.get("WANDB_INIT_TIMEOUT"):
        kwargs["settings"] = wandb.Settings(init_timeout=runs.INIT_TIMEOUT_S)
    if mode == "offline" and why:
        runs.say(f"W&B logs offline: {why}")
        runs.say(runs.sync_hint(run_dir))
    elif why:
        runs.say(f"W&B logs {mode} ({why})")
    wandb_logger = RunWandbLogger(
        save_dir=run_dir,
        project=os.environ.get("WANDB_PROJECT", runs.WANDB_PROJECT),
        name=f"{experiment}-{run_dir.name}",
        group=experiment,
        fallback_offline=mode == "online",
        **kwargs,
    )
    return [wandb_logger, csv]


class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config to `<run dir>/config.yaml` and sends it to W&B (`wandb.config`).

    The run dir is `trainer.default_root_dir`, unique per run, so runs never clash the way the stock
    callback does under a shared W&B save_dir.
    """

    def __init__(self, parser, config, config_filename: str = "config.yaml", overwrite: bool = True,
                 multifile: bool = False):
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir=False)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        atomic_write_text(Path(trainer.default_root_dir) / self.config_filename, text)
        resolved = yaml.safe_load(text)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run_config = logger.experiment.config
                # keys a W&B sweep already set (e.g. seed_everything) are locked: leave them alone
                update = {k: v for k, v in resolved.items() if k not in run_config}
                run_config.update(update, allow_val_change=True)


class SDCDCLI(LightningCLI):
    run_dir: Path | None = None
    resume_dir: Path | None = None  # the run directory a resumed fit goes on in

    def _parse_ckpt_path(self) -> None:
        """--ckpt_path: "last", a run directory or a file (sdcd.checkpointing.resolve_ckpt_path); when
        evaluating a checkpoint, its model hyperparameters replace the config's (so the architecture
        matches the weights), as Lightning does, minus the evaluation settings older checkpoints carry."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        config = self.config[sub]
        experiment = config.get("experiment_name") or runs.experiment_name(config.get("config"))
        root = config["trainer"].get("default_root_dir") or runs.RUNS_ROOT
        ckpt = resolve_ckpt_path(config.get("ckpt_path"), experiment, root, sub,
                                 os.environ.get(runs.RUN_DIR_ENV))
        config["ckpt_path"] = ckpt  # written back: config.yaml records the checkpoint the run started from
        if sub == "fit" or not (ckpt and os.path.isfile(ckpt)):
            return  # resuming: the config must fit the checkpoint; before_fit refuses one that does not
        hparams = dict(load_checkpoint_for_check(ckpt).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        legacy = [k for k in LEGACY_EVAL_ARGS if k in hparams] if is_sdcd(hparams.get("_class_path")) else []
        for k in legacy:
            del hparams[k]
        if legacy:
            runs.say(f"{ckpt}: its model settings {', '.join(legacy)} are from an older sdcd and are ignored; "
                     f"evaluation settings are the evaluation: group now (e.g. --evaluation.judge_path=...)")
        class_path = hparams.pop("_class_path", None)
        if hparams:
            model = {"class_path": class_path, "init_args": hparams} if class_path else hparams
            self.config = self.parser.parse_object({sub: {"model": model}}, self.config)

    def _value(self, config, key: str, default=None):
        """`key` of the running subcommand's part of `config` (or of `config` without subcommands)."""
        part = config[self.subcommand] if self.subcommand else config
        return part.get(key, default)

    def add_arguments_to_parser(self, parser) -> None:
        # The shuffle schedule is a top-level group (`shuffle:` in YAML, `--shuffle.every=0` on the
        # command line, `shuffle.every` in sweeps) instead of an entry of trainer.callbacks, whose
        # list items cannot be overridden reliably from the command line.
        parser.add_lightning_class_args(ShuffleCallback, "shuffle")
        # How a run is scored is not a model hyperparameter: `evaluation:` (sdcd.callbacks.evaluation)
        parser.add_lightning_class_args(EvaluationCallback, "evaluation")
        # Random states and run metadata in every checkpoint (callbacks/reproducibility.py)
        parser.add_lightning_class_args(Reproducibility, "reproducibility")
        parser.add_argument(
            "--experiment_name", type=str | None, default=None,
            help="Names the run dir runs/<experiment_name>/<run id>/ (default: the last --config's stem).",
        )
        parser.add_argument(
            "--test_after_fit", type=bool, default=False,
            help="After fit, test (= evaluate) the best checkpoint in the same run dir and W&B run, so "
            "metrics.json lands in the run dir and sweeps see the eval/* metrics.",
        )

    def before_instantiate_classes(self) -> None:
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")  # TF32 matmuls: same results to ~1e-3, much faster
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config["trainer"]
        trainer["precision"], note = cpu_precision(trainer.get("precision"), trainer.get("accelerator"))
        if note:
            runs.say(note)
        if not config.get("experiment_name"):
            # written back so that the saved config.yaml, run again, lands under the same experiment
            config["experiment_name"] = runs.experiment_name(config.get("config"))
        ckpt = config.get("ckpt_path") if self.subcommand == "fit" else None
        run_dir = runs.run_dir_of(ckpt) if ckpt and os.path.isfile(ckpt) else None
        if run_dir is not None and run_dir.parent.name == config["experiment_name"]:
            self.resume_dir = run_dir  # a resumed fit goes on in its run directory

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # jsonargparse reports an error raised in a model/data __init__ as "Does not validate against
            # any of the Union subtypes ..." with the class's own message (naming the argument) as cause
            if isinstance(err.__cause__, (ValueError, TypeError, OSError)):
                raise err.__cause__ from None
            raise

    def instantiate_trainer(self, **kwargs):
        """Builds the Trainer inside the run dir, with the default loggers when the config leaves them unset.

        The logger objects and default_root_dir go to the Trainer only, not into the config, so a saved
        config.yaml run again gets a fresh run dir of its own.
        """
        trainer_config = self._value(self.config_init, "trainer", {})
        experiment = self._value(self.config, "experiment_name")
        if self.resume_dir is not None and not os.environ.get(runs.RUN_DIR_ENV):
            self.run_dir = self.resume_dir  # DDP children get it from the environment like any run dir
        else:
            self.run_dir = runs.resolve_run_dir(experiment, trainer_config.get("default_root_dir"))
        os.environ[runs.RUN_DIR_ENV] = str(self.run_dir)  # DDP children inherit it; main() restores it
        fast_dev_run = bool(trainer_config.get("fast_dev_run"))
        if not fast_dev_run:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # W&B wants its dir to exist
        note = " (fast_dev_run: no loggers, no config.yaml)" if fast_dev_run else ""
        runs.say(f"run directory {runs.display_path(self.run_dir)}{note}")
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(self.run_dir, experiment, fast_dev_run=fast_dev_run)
        kwargs["default_root_dir"] = str(self.run_dir)
        trainer = super().instantiate_trainer(**kwargs)
        for callback in trainer.callbacks:
            if isinstance(callback, Reproducibility) and callback.metadata.experiment is None:
                callback.metadata.experiment = experiment
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # unless the config chose another IO
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        for checkpoint in trainer.checkpoint_callbacks:
            if checkpoint.dirpath is None:
                checkpoint.dirpath = os.path.realpath(self.run_dir / "checkpoints")
        return trainer

    def after_fit(self) -> None:
        if not self._value(self.config, "test_after_fit"):
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint is not None and bool(getattr(checkpoint, "best_model_path", ""))
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)

    def _check_checkpoint(self, stage: str) -> None:
        """Refuse a checkpoint of another experiment or model config before anything is written."""
        ckpt = self._value(self.config, "ckpt_path")
        if ckpt and os.path.isfile(ckpt):
            experiment = self._value(self.config, "experiment_name")
            checkpoint = load_checkpoint_for_check(ckpt)
            check_checkpoint(checkpoint, self.model, self.datamodule, experiment, ckpt, stage)
        if stage == "fit" and self.run_dir == self.resume_dir and rank_zero_only.rank == 0:
            kept = keep_previous_metrics(self.run_dir)  # the CSVLogger would delete it
            if kept is not None:
                runs.say(f"resuming: the metrics logged before are now in {runs.display_path(kept)}")

    def before_fit(self) -> None:
        self._check_checkpoint("fit")

    def before_validate(self) -> None:
        self._check_checkpoint("validate")

    def before_test(self) -> None:
        self._check_checkpoint("test")


def upgrade_config(path: str) -> str:
    """A config.yaml written by an older sdcd (a run's saved config) has the evaluation settings in the
    model block; returns the path of a copy with them in the `evaluation:` group (with a one-line note),
    or `path` itself when there is nothing to move."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return path  # not ours to judge here: the parser reports it
    model = (config.get("model") or {}) if isinstance(config, dict) else {}
    init = model.get("init_args") if is_sdcd(model.get("class_path")) else None  # SDCD's old arguments only
    moved = {LEGACY_EVAL_ARGS[k]: init.pop(k) for k in list(init or ()) if k in LEGACY_EVAL_ARGS}
    if not moved:
        return path
    evaluation = config.setdefault("evaluation", None) or {}
    config["evaluation"] = {**moved, **evaluation}
    runs.say(f"{path}: model settings {', '.join(k for k in LEGACY_EVAL_ARGS if LEGACY_EVAL_ARGS[k] in moved)} "
             "are from an older sdcd; read as the evaluation: group")
    folder = tempfile.mkdtemp(prefix="sdcd-config-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    upgraded = Path(folder) / Path(path).name  # same file name: the experiment name comes from its stem
    upgraded.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(upgraded)


def _upgrade_configs(args: list[str] | None) -> list[str] | None:
    """`--config X` / `--config=X` arguments with `upgrade_config` applied."""
    if args is None:
        return None
    out, it = [], iter(args)
    for a in it:
        if a in ("--config", "-c"):
            out += [a, upgrade_config(next(it, ""))]
        elif a.startswith("--config="):
            out.append("--config=" + upgrade_config(a.split("=", 1)[1]))
        else:
            out.append(a)
    return out


def main(args: list[str] | None = None, run: bool = True) -> SDCDCLI:
    os.environ.setdefault("WANDB_SILENT", "true")
    if args is None:  # the command line: LightningCLI reads sys.argv
        sys.argv[1:] = _upgrade_configs(sys.argv[1:])
    else:
        args = _upgrade_configs(args)
    previous_run_dir = os.environ.get(runs.RUN_DIR_ENV)
    failed = True
    try:
        cli = SDCDCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            # configs always set seed_everything explicitly; this default only applies without a config
            seed_everything_default=42,
            save_config_callback=SaveRunConfig,
            parser_kwargs={"default_env": False},
            args=args,
            run=run,
        )
        failed = False
        return cli
    finally:
        if run:  # with run=False the caller goes on using the trainer (and its W&B run)
            runs.finish_wandb(exit_code=int(failed))
        if previous_run_dir is None:
            os.environ.pop(runs.RUN_DIR_ENV, None)
        else:
            os.environ[runs.RUN_DIR_ENV] = previous_run_dir


USER_ERRORS = (ValueError, FileNotFoundError, KeyError)  # what sdcd raises for a bad config, value or file


def run_cli(args: list[str] | None = None) -> None:
    """The command line (`python -m sdcd`, `sdcd`): a user's mistake — a bad override, an impossible
    value, a missing file — prints one line naming it and exits with status 2, no traceback.
    SDCD_DEBUG=1 shows the traceback."""
    try:
        main(args)
    except USER_ERRORS as err:
        if os.environ.get("SDCD_DEBUG"):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"sdcd: error: {first} (SDCD_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)
