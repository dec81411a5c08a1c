"""The sequential-disentangler interface: what evaluation, the pictures and the sweeps talk to.

A model is any LightningModule with

    encode(x: (B, T, C, H, W), mean=False) -> Codes      static code f: (B, D_f), dynamic codes λ: (B, T, D_z)
    decode(f: (B, D_f), lam: (B, T, D_z)) -> frames (B, T, C, H, W) in [0, 1]
    sample_static(n) -> f: (n, D_f)                      from the model's static prior
    sample_dynamics(n, n_frames=None, mean=False) -> λ: (n, T, D_z)   from its dynamic prior

`SequentialModule` gives such a model the Lightning plumbing every method shares (logging of the loss
terms, fused Adam, gradient clipping with the non-finite guard, the data-shape check), so a method is
its networks, its `loss_terms` and the four calls above. SDCD (sdcd.model) and the baselines
(sdcd.baselines) are built on it.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from lightning import LightningModule

from sdcd.data_modules.sampling import global_seed
from sdcd.guard import GUARDED_TERMS, NonFiniteGuard


def check_hparams(choices: dict[str, tuple] | None = None, positive: tuple[str, ...] = (),
                  non_negative: tuple[str, ...] = (), at_least_two: tuple[str, ...] = (), **values) -> None:
    """One-line ValueErrors naming `model.<arg>`: `choices` maps a name to its allowed values; `positive`
    and `non_negative` list names; `values` holds the arguments by name."""
    for name, allowed in (choices or {}).items():
        if values[name] not in allowed:
            raise ValueError(f"model.{name} must be one of {', '.join(allowed)}, got {values[name]!r}")
    for name in at_least_two:
        if values[name] < 2:
            raise ValueError(f"model.{name} must be positive (at least 2 frames), got {values[name]}")
    for name in positive:
        if values[name] <= 0:
            raise ValueError(f"model.{name} must be positive, got {values[name]}")
    for name in non_negative:
        if values[name] < 0:
            raise ValueError(f"model.{name} must be ≥ 0, got {values[name]}")


class Codes(NamedTuple):
    """What `encode` returns for x: (B, T, C, H, W)."""

    f: torch.Tensor  # (B, D_f) static code (a sample of q(f | x) unless mean=True)
    f_mean: torch.Tensor  # (B, D_f) its posterior mean
    lam: torch.Tensor  # (B, T, D_z) dynamic codes
    features: torch.Tensor  # (B, T, D) frame features they were computed from


def scheduled_lr(step: int, lr: float, decay_start: int = 0, decay_steps: int = 0, final: float = 0.05) -> float:
    """The learning rate at optimizer step `step`: `lr` until `decay_start`, then a cosine down to
    `final`·lr over `decay_steps` steps, held there after. `decay_steps` 0 keeps `lr` throughout.

    A function of the step alone, so a resumed run (or a run resumed with a schedule it did not have,
    e.g. a constant-lr autoencoder continued with a decay) and every DDP rank get the same value."""
    if decay_steps <= 0 or step < decay_start:
        return lr
    t = min(1.0, (step - decay_start) / decay_steps)
    return lr * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t)))


@runtime_checkable
class SequentialDisentangler(Protocol):
    def encode(self, x: torch.Tensor, mean: bool = False) -> Codes: ...

    def decode(self, f: torch.Tensor, lam: torch.Tensor) -> torch.Tensor: ...

    def sample_static(self, n: int) -> torch.Tensor: ...

    def sample_dynamics(self, n: int, n_frames: int | None = None, mean: bool = False) -> torch.Tensor: ...


class SequentialModule(LightningModule):
    """Shared training plumbing. A subclass sets hparams `n_frames`, `frame_size`, `channels`, `lr`,
    `grad_clip_norm`, `nonfinite_patience` (its own documented `__init__` arguments; optionally
    `lr_decay_start`, `lr_decay_steps`, `lr_final`: `scheduled_lr`) and implements
    `loss_terms(x, shuffle) -> {"loss": ..., <term>: ...}` with every name in `guarded_terms`."""

    guarded_terms: tuple[str, ...] = GUARDED_TERMS

    def __init__(self) -> None:
        super().__init__()
        self.guard = NonFiniteGuard(self.guarded_terms)  # non-finite step bookkeeping, on the device
        # Set per training step by callbacks.ShuffleCallback (keyed on global_step); models without a
        # shuffle constraint ignore it.
        self.shuffle: bool = True
        self.shuffle_mode: str = "batch"
        self.shuffle_generator: torch.Generator | None = None  # per-rank stream for "sequence" mode

    def loss_terms(self, x: torch.Tensor, shuffle: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def training_loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss terms of a training batch (a subclass may use more of the batch than x)."""
        return self.loss_terms(batch["x"], shuffle=self.shuffle)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.training_loss_terms(batch)
        loss, b = terms.pop("loss"), batch["x"].shape[0]
        self.guard.record_terms(terms)  # which optimised terms are non-finite, read when clipping below
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=b)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.loss_terms(batch["x"], shuffle=False)
        b = batch["x"].shape[0]
        self.log("val/sse", terms.pop("sse"), prog_bar=True, sync_dist=True, batch_size=b)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True, batch_size=b)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.loss_terms(batch["x"], shuffle=False)
        self.log_dict({f"test/{k}": v for k, v in terms.items()}, sync_dist=True, batch_size=batch["x"].shape[0])

    def configure_optimizers(self):
        # fused: one kernel per step, and its found_inf input lets the guard skip a step without a sync
        params = [p for p in self.parameters() if p.requires_grad]  # not a frozen part
        return torch.optim.Adam(params, lr=self.hparams.lr, fused=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # The recipe's clipping is a model hyperparameter; an explicit Trainer setting still wins.
        val = gradient_clip_val if gradient_clip_val is not None else self.hparams.grad_clip_norm
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"{type(self).__name__} clips gradients by norm; "
                             f"trainer.gradient_clip_algorithm={gradient_clip_algorithm!r}")
        params = [p for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=val or float("inf"), foreach=True)
        # a non-finite loss or gradient never reaches the weights (no host sync)
        skipped = self.guard.skip_if_nonfinite(optimizer, norm, self.global_step)
        self.log("train/skipped_steps", skipped, on_step=True, on_epoch=False)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # the lr schedule (optional hparams lr_decay_*; constant without them): set from global_step on
        # the host, no sync; it overrides whatever lr a resumed optimizer state carried
        hp = self.hparams
        if hp.get("lr_decay_steps", 0) > 0:
            lr = scheduled_lr(self.global_step, hp.lr, hp.lr_decay_start, hp.lr_decay_steps, hp.lr_final)
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.guard.check(self.global_step, self.hparams.nonfinite_patience)  # one host sync every K steps

    def on_fit_start(self) -> None:
        # per-rank stream for the "sequence" shuffle mode: reproducible from (seed, rank), different per rank
        seed = global_seed()
        self.shuffle_generator = torch.Generator(device=self.device).manual_seed(seed * 1000 + self.global_rank)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        hp = self.hparams
        for name in ("n_frames", "frame_size", "n_channels"):
            mine = hp.channels if name == "n_channels" else hp[name]
            theirs = getattr(dm, name, None)
            if theirs is not None and theirs != mine:
                key = "channels" if name == "n_channels" else name
                raise ValueError(
                    f"model.{key}={mine} does not match the data ({type(dm).__name__}.{name}={theirs}); "
                    f"set --model.{key}={theirs} or change the data config"
                )

    def swap(self, x_static: torch.Tensor, x_dynamic: torch.Tensor) -> torch.Tensor:
        """Frames with the static code of `x_static` and the dynamics of `x_dynamic` (both (B, T, C, H, W))."""
        return self.decode(self.encode(x_static).f, self.encode(x_dynamic).lam)
