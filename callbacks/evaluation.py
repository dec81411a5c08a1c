"""EvaluationCallback: when and how a run is scored by its judge (the top-level `evaluation:` group).

How to score a model is not part of what was trained, so none of it is a model hyperparameter: it lives
here, is set from the config or the command line (`--evaluation.judge_path=…`, `--evaluation.repeats=2`),
and a checkpoint never overrides it. The model is anything with the sequential-disentangler API
(`sdcd.interface`): the protocol itself is `sdcd.evaluation`, the files `sdcd.results`.
"""

from __future__ import annotations

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from sdcd.evaluation import evaluate, peers_protocol
from sdcd.judge import load_judge
from sdcd.probes import linear_probes
from sdcd.results import headline_table, write_results
from sdcd.runs import output_dir


class EvaluationCallback(Callback):
    """Scores the model with a judge: the full protocol at test time, optionally a quick check during fit.

    Args:
        judge_path: Judge file for this data (`make judge DATA=…` writes one); None: test reports the
            reconstruction only, no judge metrics. Only its path and hash go into checkpoints.
        repeats: R, repetitions of the test-time protocol (fresh random draws each); mean ± std over them.
        every_n_epochs: During fit, run the protocol (one repeat) on a fixed validation subset every N
            epochs and log it as val/eval/*; 0 = off.
        val_sequences: Size of that fixed validation subset (its first N sequences).
        peers_protocol: At test time also run the C-DSVAE/SPYL/DBSE variant on this factor's head
            (e.g. "action" on Sprites); None = off.
        probes: At test time also fit linear probes of every factor from f and from the time-mean of λ
            on the training split, scored on the test split (`sdcd.probes`).
    """

    def __init__(self, judge_path: str | None = None, repeats: int = 5, every_n_epochs: int = 0,
                 val_sequences: int = 1024, peers_protocol: str | None = None, probes: bool = True):
        for name, value, least in (("repeats", repeats, 1), ("val_sequences", val_sequences, 1),
                                   ("every_n_epochs", every_n_epochs, 0)):
            if value < least:
                raise ValueError(f"evaluation.{name} must be ≥ {least}, got {value}")
        self.judge_path = judge_path
        self.repeats = repeats
        self.every_n_epochs = every_n_epochs
        self.val_sequences = val_sequences
        self.peers_protocol = peers_protocol
        self.probes = probes
        self.judge = None
        self.results: dict[str, dict[str, float]] = {}  # the last test-time results

    # ------------------------------------------------------------------ judge
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        wants = stage == "test" or (stage == "fit" and self.every_n_epochs > 0)
        if not wants or self.judge is not None or not getattr(dm, "factors", ()):
            return
        if self.judge_path is None:
            if stage == "fit":
                raise ValueError("evaluation.every_n_epochs > 0 needs evaluation.judge_path (a judge file for this "
                                 "data)")
            rank_zero_info("sdcd: no evaluation.judge_path set: test reports reconstruction only, no judge metrics")
            return
        self.judge = load_judge(self.judge_path, dm, map_location="cpu")  # checks it was trained on this data

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, split: str, repeats: int,
                  max_sequences: int | None, progress: bool) -> dict:
        self.judge.to(pl_module.device)
        return evaluate(pl_module, trainer.datamodule, self.judge, split=split, repeats=repeats,
                        max_sequences=max_sequences, seed=trainer.current_epoch, rank=trainer.global_rank,
                        world_size=trainer.world_size, progress=progress)

    # ------------------------------------------------------------------ during fit
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        n = self.every_n_epochs
        if self.judge is None or not n or trainer.sanity_checking or (trainer.current_epoch + 1) % n:
            return
        results = self._evaluate(trainer, pl_module, "val", 1, self.val_sequences, progress=False)
        pl_module.log_dict({f"val/eval/{k}": v["mean"] for k, v in results.items()}, rank_zero_only=True)

    # ------------------------------------------------------------------ test = the full protocol
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.judge is None:
            return
        dm = trainer.datamodule
        # honour --trainer.limit_test_batches / fast_dev_run: score as many sequences as the loop saw
        limit = trainer.num_test_batches[0] * dm.eval_batch_size * trainer.world_size
        results = self._evaluate(trainer, pl_module, "test", self.repeats, limit, progress=trainer.is_global_zero)
        if self.peers_protocol and trainer.is_global_zero:
            results.update(peers_protocol(pl_module, dm, self.judge, self.peers_protocol, self.repeats, progress=True))
        if self.probes and trainer.is_global_zero and "train" in getattr(dm, "splits", ("train",)):
            probes = linear_probes(pl_module, dm, "train", "test", max_train=10_000)
            results.update({k: {"mean": v, "std": 0.0} for k, v in probes.items()})
        self.results = results
        pl_module.log_dict({f"eval/{k}": v["mean"] for k, v in results.items()}, rank_zero_only=True)
        pl_module.log_dict({f"eval/{k}_std": v["std"] for k, v in results.items()}, rank_zero_only=True)
        if trainer.is_global_zero:
            run_dir = output_dir(trainer)
            meta = {"checkpoint": str(trainer.ckpt_path or ""), "experiment": run_dir.parent.name, "split": "test",
                    "repeats": self.repeats, "judge": str(self.judge_path), "sequences_per_repeat": limit}
            paths = write_results(run_dir, results, dm.factors, meta)
            rank_zero_info(headline_table(results) + f"\nsdcd: wrote {paths[0]} and {paths[1]}")


def evaluation_callback(trainer: Trainer) -> EvaluationCallback | None:
    """The trainer's EvaluationCallback, if it has one."""
    return next((c for c in trainer.callbacks if isinstance(c, EvaluationCallback)), None)
