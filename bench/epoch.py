"""Wall time of one training epoch, end to end (data included), through the Lightning Trainer.

The run is `python -m sdcd fit --config <experiment>` for one epoch with validation, logger, checkpoints
and progress bar off, so the epoch time is the training loop itself: index batches, on-device batch
materialisation (Sprites: uint8 table lookup; Moving dSprites: rendering), forward, backward, clipping,
Adam, logging calls. Setup (label tables / Sprites cache load, model to device) is reported apart.

    .venv/bin/python bench/epoch.py --data small                                  # CPU, tiny config
    .venv/bin/python bench/epoch.py --data dsprites --limit-train-batches 3 --batch-size 4  # reduced
    python bench/epoch.py --data dsprites sprites --variant auto:train_step.json --json epoch.json

--variant picks precision / compile / channels_last by the names of bench/train_step.py (its Lightning
ones); `auto:<train_step.json>` takes, per config, the fastest variant measured there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import (
    CONFIGS,
    LIGHTNING_VARIANTS,
    ROOT,
    VARIANTS,
    apply_speed_options,
    environment,
    load_average,
)  # noqa: E402


def choose_variant(spec: str, config: str, device_type: str) -> str:
    """A variant name, or `auto:<train_step.json>`: the fastest Lightning variant measured for `config`
    (eager_bf16 on CUDA, eager_fp32 elsewhere when nothing was measured)."""
    if not spec.startswith("auto"):
        return spec
    fallback = "eager_bf16" if device_type == "cuda" else "eager_fp32"
    path = Path(spec.partition(":")[2])
    try:
        measured = json.loads(path.read_text())["configs"][config]["variants"]
    except (OSError, KeyError, ValueError):
        return fallback
    ok = {k: v["step_s"] for k, v in measured.items() if k in LIGHTNING_VARIANTS and "step_s" in v}
    return min(ok, key=ok.get) if ok else fallback


def lightning_cli(config: str, variant: str, root_dir: str, extra: list[str]):
    """`python -m sdcd fit --config <experiment of config>` built but not run, in `variant`."""
    from sdcd.cli import main

    args = [
        "--config",
        str(ROOT / CONFIGS[config]),
        f"--trainer.precision={VARIANTS[variant].precision}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root_dir}",
        *extra,
    ]
    cli = main(args, run=False)
    v = VARIANTS[variant]
    apply_speed_options(cli.model, cli.trainer, compile=v.compile is not None, channels_last=v.channels_last)
    return cli


class Clock(Callback):
    """Host-clock marks, each after a device sync: fit start, epoch start/end, end of the first step."""

    def __init__(self):
        self.marks: dict[str, float] = {}

    def _mark(self, trainer, key: str) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        self.marks[key] = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._mark(trainer, "epoch_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._mark(trainer, "first_step_end")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._mark(trainer, "epoch_end")


def time_epoch(config: str, variant: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="sdcd-epoch-") as root_dir:
        cli = lightning_cli(
            config, variant, root_dir, ["--trainer.max_epochs=1", "--trainer.limit_val_batches=0", *extra]
        )
        clock = Clock()
        cli.trainer.callbacks.append(clock)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, cli.datamodule)
        m, trainer, dm = clock.marks, cli.trainer, cli.datamodule
    steps = trainer.global_step
    epoch_s = m["epoch_end"] - m["epoch_start"]
    rest_s = m["epoch_end"] - m["first_step_end"]
    return {
        "variant": variant,
        "precision": VARIANTS[variant].precision,
        "device": str(trainer.strategy.root_device),
        "batch_size": dm.batch_size,
        "train_sequences": dm.split_size("train"),
        "steps": steps,
        "full_epoch": steps == len(trainer.train_dataloader),
        "setup_s": m["epoch_start"] - start,
        "epoch_s": epoch_s,
        "first_step_s": m["first_step_end"] - m["epoch_start"],
        "steps_per_s_after_first": (steps - 1) / rest_s if steps > 1 else None,
        "sequences_per_s": steps * dm.batch_size / epoch_s,
        "load_average": load_average(),
        "overrides": extra,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", nargs="+", choices=sorted(CONFIGS), default=["small"])
    parser.add_argument(
        "--variant",
        default="eager_fp32",
        help=f"one of {', '.join(LIGHTNING_VARIANTS)}, or auto:<train_step.json>",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="override data.batch_size (a reduced epoch)"
    )
    parser.add_argument(
        "--limit-train-batches", type=int, default=None, help="stop the epoch after N batches (reduced)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here (after every config)")
    parser.add_argument("overrides", nargs="*", help="extra `python -m sdcd` arguments, after --")
    args = parser.parse_args(argv)
    if not args.variant.startswith("auto") and args.variant not in LIGHTNING_VARIANTS:
        parser.error(f"--variant must be one of {LIGHTNING_VARIANTS} or auto:<json>, got {args.variant!r}")
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"env": environment(torch.device(device_type)), "epochs": {}}
    for config in args.data:
        extra = list(args.overrides)
        if args.batch_size:
            extra.append(f"--data.batch_size={args.batch_size}")
        if args.limit_train_batches:
            extra.append(f"--trainer.limit_train_batches={args.limit_train_batches}")
        variant = choose_variant(args.variant, config, device_type)
        if variant.startswith("compiled"):
            torch._dynamo.reset()
        r = result["epochs"][config] = time_epoch(config, variant, extra)
        label = "full epoch" if r["full_epoch"] else "REDUCED epoch"
        print(
            f"epoch {config} [{variant}, {label}: {r['steps']} steps × B={r['batch_size']}] "
            f"on {r['device']}: "
            f"{r['epoch_s']:.2f} s (first step {r['first_step_s']:.2f} s; setup {r['setup_s']:.2f} s; "
            f"{r['sequences_per_s']:.1f} seq/s); load average {r['load_average']}",
            flush=True,
        )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
