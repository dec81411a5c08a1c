"""Run directories and the choice of logger (sdcd.cli builds the loggers from it).

Light on purpose (no torch/lightning import): sdcd.sweeps and sdcd.report use it too.

Every command that builds a Trainer gets its own run directory::

    runs/<experiment>/<run id>/      experiment = stem of the last --config (or --experiment_name),
        config.yaml                  run id = sortable timestamp + short random suffix
        metrics.csv                  every logged metric (a CSVLogger, also when W&B logs)
        hparams.yaml
        checkpoints/                 ModelCheckpoint files
        wandb/                       W&B files; offline runs upload later with `wandb sync`
        pictures/, metrics.json      written by the visual callback and the evaluation

`trainer.log_dir` and `trainer.default_root_dir` both resolve to the run directory. `SDCD_RUN_DIR` names
the run directory exactly (sweep-local uses it; the CLI also sets it so DDP children agree with rank 0);
`--trainer.default_root_dir` replaces the `runs` root.

Which loggers (only when the config leaves `trainer.logger` unset or `true`):
- `LOGGER` env var: `wandb` (default), `csv`, or `tensorboard`; a CSVLogger is always attached.
- W&B mode: `WANDB_MODE` if set (online/offline/disabled); otherwise online when credentials are
  found (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE or a .netrc entry for the W&B host) and the host
  answers a short TCP probe, else offline. An online start that fails (timeout, bad key) falls back
  to offline instead of stopping the run.
"""

from __future__ import annotations

import netrc
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

RUNS_ROOT = "runs"
RUN_DIR_ENV = "SDCD_RUN_DIR"  # an exact run directory; also how DDP children agree with rank 0
LOGGER_ENV = "LOGGER"
LOGGER_CHOICES = ("wandb", "csv", "tensorboard")
WANDB_PROJECT = "sdcd"
DEFAULT_WANDB_HOST = "https://api.wandb.ai"
INIT_TIMEOUT_S = 60  # wandb.init's own default is 90 s; WANDB_INIT_TIMEOUT overrides both
PROBE_TIMEOUT_S = 3.0


def process_rank(environ=os.environ) -> int:
    """The global rank from the launcher's env vars (the ones Lightning reads), 0 outside distributed runs."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if environ.get(key):
            return int(environ[key])
    return 0


def say(message: str) -> None:
    """One line on stdout from rank 0 only, prefixed so it stands out from Lightning's output."""
    if process_rank() == 0:
        print(f"sdcd: {message}", flush=True)


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(path).resolve())


# ---------------------------------------------------------------------------------------------- run dirs


def run_dir_of(ckpt_path: str | os.PathLike) -> Path | None:
    """The run directory holding a checkpoint (`<run dir>/checkpoints/<file>`), else None."""
    parent = Path(ckpt_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else None


def output_dir(trainer: Any) -> Path:
    """Where a run's outputs (metrics.json, pictures) go: the evaluated checkpoint's run directory when
    `trainer.ckpt_path` is a file, else the trainer's own run directory (`log_dir`, which broadcasts:
    call this on every rank)."""
    ckpt = getattr(trainer, "ckpt_path", None)
    if ckpt and Path(ckpt).is_file():
        return run_dir_of(ckpt) or Path(ckpt).resolve().parent
    return trainer_run_dir(trainer)


def trainer_run_dir(trainer: Any) -> Path:
    """The trainer's own run directory: `log_dir` (the sdcd CLI makes it the run's folder), else
    `default_root_dir`. `log_dir` broadcasts: call this on every rank."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def new_run_id(now: float | None = None) -> str:
    """`YYYYmmdd-HHMMSS-xxxx`: sorts by start time; the random suffix separates runs started together."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{secrets.token_hex(2)}"


def experiment_name(config_paths) -> str:
    """The stem of the last `--config` file, or "default" without one."""
    if not config_paths:
        return "default"
    last = config_paths[-1]
    return Path(getattr(last, "relative", None) or os.fspath(last)).stem


def resolve_run_dir(experiment: str, root: str | os.PathLike | None = None) -> Path:
    """The run directory: `$SDCD_RUN_DIR` when set, else `<root or runs>/<experiment>/<new run id>`."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    return Path(root or RUNS_ROOT) / experiment / new_run_id()


# ---------------------------------------------------------------------------------------------- W&B mode


def wandb_base_url(environ=os.environ) -> str:
    return environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST


def netrc_path(environ=os.environ) -> Path:
    if environ.get("NETRC"):
        return Path(environ["NETRC"]).expanduser()
    home = Path(environ.get("HOME") or Path.home())
    return home / ".netrc"


def has_wandb_credentials(environ=os.environ) -> bool:
    """Whether W&B could authenticate, judged from env vars and .netrc only (no network)."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = netrc_path(environ)
    if not path.is_file():
        return False
    try:
        entries = netrc.netrc(path)
    except (netrc.NetrcParseError, OSError):
        return False
    host = urlsplit(wandb_base_url(environ)).netloc
    return entries.authenticators(host) is not None


def host_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the URL's host within `timeout` seconds (DNS included), in a daemon thread."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def choose_wandb_mode(environ=os.environ) -> tuple[str, str]:
    """(mode to pass to wandb.init, the reason for the log). WANDB_MODE, when set, is passed on as is:
    wandb reads its env once per process, so a later in-process run would otherwise not see it change."""
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"], f"WANDB_MODE={environ['WANDB_MODE']}"
    if not has_wandb_credentials(environ):
        return "offline", f"no W&B credentials (WANDB_API_KEY unset, no entry in {netrc_path(environ)})"
    url = wandb_base_url(environ)
    if not host_reachable(url):
        return "offline", f"W&B server {url} unreachable"
    return "online", "W&B credentials found"


def sync_hint(run_dir: Path) -> str:
    return f"upload the W&B run later with: wandb sync {display_path(run_dir)}/wandb/offline-run-*"


# ---------------------------------------------------------------------------------------------- loggers


def logger_kind(environ=os.environ) -> str:
    kind = (environ.get(LOGGER_ENV) or "wandb").strip().lower()
    kind = {"tb": "tensorboard", "w&b": "wandb"}.get(kind, kind)
    if kind not in LOGGER_CHOICES:
        raise ValueError(
            f"{LOGGER_ENV}={environ.get(LOGGER_ENV)!r} is not a known logger; expected one of "
            f"{LOGGER_CHOICES} (or set --trainer.logger explicitly)"
        )
    return kind


def finish_wandb(exit_code: int = 0) -> None:
    """Close a W&B run left open in this process (WandbLogger never calls wandb.finish), then forget the
    settings wandb read from the environment when it started, so a later in-process run reads its own."""
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    if getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
    wandb.teardown()
