"""ShuffleCallback: decides, per training step, whether the frame-wise static codes are permuted."""

from __future__ import annotations

from lightning import Callback, LightningModule, Trainer

from sdcd.shuffle import SHUFFLE_MODES


class ShuffleCallback(Callback):
    """Schedules the shuffle constraint.

    The decision keys on `trainer.global_step` only, so every DDP rank takes the same branch on the
    same step and resumed runs continue the schedule exactly.

    Args:
        every: Shuffle on every `every`-th optimisation step after the warm-up: 1 = every step (the
            paper), 0 = never (the no-shuffle ablation), n = steps warmup, warmup+n, warmup+2n, ...
        warmup_steps: Steps at the start of training that never shuffle.
        mode: "batch" draws one time permutation shared by the whole batch (the paper); "sequence"
            draws one per sequence.
    """

    def __init__(self, every: int = 1, warmup_steps: int = 0, mode: str = "batch"):
        if every < 0:
            raise ValueError(f"ShuffleCallback.every must be ≥ 0 (0 = never shuffle), got {every}")
        if warmup_steps < 0:
            raise ValueError(f"ShuffleCallback.warmup_steps must be ≥ 0, got {warmup_steps}")
        if mode not in SHUFFLE_MODES:
            raise ValueError(f"ShuffleCallback.mode must be one of {SHUFFLE_MODES}, got {mode!r}")
        self.every, self.warmup_steps, self.mode = every, warmup_steps, mode
        self.steps = 0  # training batches seen (restored on resume)
        self.shuffled = 0  # of which shuffled

    def is_shuffle_step(self, step: int) -> bool:
        return self.every > 0 and step >= self.warmup_steps and (step - self.warmup_steps) % self.every == 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if not hasattr(pl_module, "shuffle_mode"):  # e.g. a judge trained through the same CLI
            return
        pl_module.shuffle = self.is_shuffle_step(trainer.global_step)
        pl_module.shuffle_mode = self.mode

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if not hasattr(pl_module, "shuffle_mode"):
            return
        self.steps += 1
        self.shuffled += int(pl_module.shuffle)
        # Python numbers: logging them costs no device sync.
        pl_module.log("train/shuffle_rate", self.shuffled / self.steps, on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "shuffled": self.shuffled}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps, self.shuffled = state_dict["steps"], state_dict["shuffled"]
