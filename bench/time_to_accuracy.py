"""Time to accuracy: train until the swap test reaches the target, then run the full evaluation protocol.

Trains an experiment (default `lpc_shuffle`) through the Lightning Trainer. Every `--eval-every` epochs
the swap test alone (one repeat, seeded by the epoch) scores the first `--eval-sequences` sequences of the
val split with the judge; training stops as soon as static and dynamic accuracy both reach `--target`,
or when the training clock passes `--max-train-s` (or the wall clock `--max-wall-s`). The training clock
counts the epochs only (first-step compilation included), not the periodic evaluations; the wall clock
counts everything since `fit` began.
Then `trainer.test` runs the full protocol (R = evaluation.repeats, plus the peers' protocol when the
config sets it) on the test split. The JSON is rewritten after every evaluation.

    python bench/time_to_accuracy.py --judge judges/sprites.pt --variant auto:train_step.json --json tta.json
    .venv/bin/python bench/time_to_accuracy.py --config small --judge judges/tiny.pt --eval-every 1
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

from sdcd.callbacks.evaluation import evaluation_callback
from sdcd.runs import output_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from epoch import choose_variant, lightning_cli  # noqa: E402
from train_step import CONFIGS, LIGHTNING_VARIANTS, environment, load_average  # noqa: E402


class SwapTarget(Callback):
    """Training clock, periodic swap test on a fixed val subset, and the stop rules (target, clocks).

    `args`: the script's eval_every, eval_sequences, target, max_train_s, max_wall_s."""

    def __init__(self, judge, args: argparse.Namespace, record: dict, save):
        self.judge, self.args, self.record, self.save = judge, args, record, save
        self.train_s = 0.0
        self.fit_start = self.epoch_start = 0.0

    def _now(self, trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = self._now(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_start = self._now(trainer)

    def _out_of_time(self, trainer) -> str | None:
        a = self.args
        if self.train_s >= a.max_train_s:
            return f"training clock {self.train_s:.1f} s ≥ --max-train-s {a.max_train_s}"
        wall = self._now(trainer) - self.fit_start
        if a.max_wall_s is not None and wall >= a.max_wall_s:
            return f"wall clock {wall:.1f} s ≥ --max-wall-s {a.max_wall_s}"
        return None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from sdcd.evaluation import evaluate

        a = self.args
        self.train_s += self._now(trainer) - self.epoch_start
        epoch = trainer.current_epoch + 1  # epochs done
        out_of_time = self._out_of_time(trainer)
        last = trainer.max_epochs not in (None, -1) and epoch >= trainer.max_epochs
        if epoch % a.eval_every and not (out_of_time or last):
            return
        start = time.perf_counter()
        res = evaluate(pl_module, trainer.datamodule, self.judge, split="val", repeats=1, tests=("swap",),
                       max_sequences=a.eval_sequences, seed=epoch)  # fmt: skip
        static, dynamic = res["swap/acc/static"]["mean"], res["swap/acc/dynamic"]["mean"]
        point = {"epoch": epoch, "step": trainer.global_step, "train_s": self.train_s,
                 "wall_s": self._now(trainer) - self.fit_start, "eval_s": time.perf_counter() - start,
                 "swap_static": static, "swap_dynamic": dynamic}  # fmt: skip
        self.record["progress"].append(point)
        print(f"tta: epoch {epoch} step {trainer.global_step}: train {self.train_s:.1f} s, "
              f"wall {point['wall_s']:.1f} s, swap static {100 * static:.2f}%, dynamic {100 * dynamic:.2f}%",
              flush=True)  # fmt: skip
        if static >= a.target and dynamic >= a.target:
            self.record["reached"] = point
            trainer.should_stop = True
        elif out_of_time:
            self.record["stopped"] = out_of_time
            trainer.should_stop = True
        self.save()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="sprites")
    p.add_argument("--judge", required=True, help="judge file for the config's data (make judge DATA=…)")
    p.add_argument("--variant", default="eager_bf16",
                   help=f"one of {', '.join(LIGHTNING_VARIANTS)}, or auto:<train_step.json>")
    p.add_argument("--target", type=float, default=0.999, help="swap accuracy wanted, static and dynamic")
    p.add_argument("--eval-every", type=int, default=5, help="epochs between swap evaluations")
    p.add_argument("--eval-sequences", type=int, default=450, help="the fixed val subset (first N)")
    p.add_argument("--max-train-s", type=float, default=180.0, help="training clock limit")
    p.add_argument("--max-wall-s", type=float, default=None, help="wall clock limit (since fit began)")
    p.add_argument("--max-epochs", type=int, default=None, help="default: the config's")
    p.add_argument("--test-repeats", type=int, default=None, help="R of the final protocol")
    p.add_argument("--no-test", action="store_true", help="skip the final protocol on the test split")
    p.add_argument("--json", type=Path, default=None, help="write the results here (after every evaluation)")
    p.add_argument("--root-dir", default=None, help="where the run directory goes (default: a new temp dir)")
    p.add_argument("overrides", nargs="*", help="extra `python -m sdcd` arguments, after --")
    args = p.parse_args(argv)  # fmt: skip
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    variant = choose_variant(args.variant, args.config, device_type)
    if variant not in LIGHTNING_VARIANTS:
        p.error(f"--variant must be one of {LIGHTNING_VARIANTS} or auto:<json>, got {variant!r}")

    settings = ("target", "eval_every", "eval_sequences", "max_train_s", "max_wall_s")
    record: dict = {"env": environment(torch.device(device_type)), "config": CONFIGS[args.config],
                    "variant": variant, **{k: getattr(args, k) for k in settings}}
    record.update(progress=[], reached=None)

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=1) + "\n")

    extra = ["--trainer.limit_val_batches=0", f"--evaluation.judge_path={args.judge}", *args.overrides]
    if args.max_epochs:
        extra.append(f"--trainer.max_epochs={args.max_epochs}")
    if args.test_repeats:
        extra.append(f"--evaluation.repeats={args.test_repeats}")
    cli = lightning_cli(args.config, variant, args.root_dir or tempfile.mkdtemp(prefix="sdcd-tta-"), extra)
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    from sdcd.judge import load_judge

    dm.setup("fit")
    judge = load_judge(args.judge, dm, map_location=trainer.strategy.root_device)
    target = SwapTarget(judge, args, record, save)
    trainer.callbacks.append(target)
    start = time.perf_counter()
    trainer.fit(model, dm)
    record.update(fit_wall_s=time.perf_counter() - start, train_s=target.train_s, steps=trainer.global_step,
                  epochs=trainer.current_epoch, load_average_after_fit=load_average())  # fmt: skip
    reached = record["reached"]
    if reached:
        verdict = (f"reached in {reached['train_s']:.1f} s of training ({reached['wall_s']:.1f} s wall, "
                   f"epoch {reached['epoch']})")
    else:
        record.setdefault("stopped", f"max_epochs ({trainer.current_epoch}) reached first")
        verdict = f"NOT reached ({record['stopped']})"
    print(f"tta: target {100 * args.target:.1f}% static and dynamic {verdict}", flush=True)
    save()
    if not args.no_test:
        start = time.perf_counter()
        trainer.test(model, dm, verbose=False)
        evaluation = evaluation_callback(trainer)
        record.update(test_s=time.perf_counter() - start, test=evaluation.results,
                      test_repeats=evaluation.repeats, run_dir=str(output_dir(trainer)))  # fmt: skip
        save()
    return record


if __name__ == "__main__":
    main()
