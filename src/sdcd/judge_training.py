"""JudgeModule: trains a judge (sdcd.judge) on ground-truth labels and writes its judge file.

`make judge DATA=<name>` runs `python -m sdcd fit --config experiments/judge_<name>.yaml`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from sdcd.data_modules.base import Factor, data_signature
from sdcd.interface import scheduled_lr
from sdcd.judge import Judge, judge_targets, save_judge
from sdcd.metrics import FactorScores, distributed_valid_mask


class JudgeModule(LightningModule):
    """Trains a `Judge` on ground-truth labels (sum of per-head cross-entropies, Adam).

    The factor list comes from the data module at `setup()`; the frame size and channels from one
    materialised sample. At the end of `fit` it scores the judge on the real test split (all of it,
    sharded over ranks without padding), prints the per-head scores and writes the judge file with
    its data record. Validation logs per-head accuracy as `val/acc/<factor>`.

    Args:
        judge_path: where to write the judge file at the end of fit; None writes nothing.
        base_channels: width of the first conv block (64 for the paper-size judges).
        embed_dim: frame embedding size fed to the BiLSTM.
        hidden_size: BiLSTM hidden size per direction.
        head_hidden: hidden width of each head.
        sequence_level_factors: dynamic factors constant over a sequence by construction, classified
            once per sequence (e.g. ["action"] for Sprites).
        lr: Adam learning rate.
        betas: Adam betas.
        test_after_fit: score the test split at the end of fit and store the scores in the judge file.
        bn_batches: at the end of fit, recompute the BatchNorm statistics as a plain average over
            this many training batches with the final weights (the running averages lag behind the
            weights, which matters after short runs); 0 keeps the running averages.
        lr_decay_start: optimizer step at which a cosine decay of the learning rate starts.
        lr_decay_steps: its length in steps; 0 keeps the rate constant. Without a decay the last
            epochs still take full-size steps, and which of a few hard test sequences a short judge
            gets right then depends on its seed and precision (README, "Which judge").
        lr_final: the rate at the end of the decay, as a fraction of `lr`.
    """

    def __init__(
        self,
        judge_path: str | None = "judges/judge.pt",
        base_channels: int = 64,
        embed_dim: int = 128,
        hidden_size: int = 256,
        head_hidden: int = 256,
        sequence_level_factors: list[str] | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        test_after_fit: bool = True,
        bn_batches: int = 50,
        lr_decay_start: int = 0,
        lr_decay_steps: int = 0,
        lr_final: float = 0.05,
    ):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"model.lr must be positive, got {lr}")
        if bn_batches < 0:
            raise ValueError(f"model.bn_batches must be >= 0, got {bn_batches}")
        if lr_decay_start < 0 or lr_decay_steps < 0 or not 0 <= lr_final <= 1:
            raise ValueError("model.lr_decay_start and model.lr_decay_steps must be >= 0 and model.lr_final in "
                             f"[0, 1], got {lr_decay_start}, {lr_decay_steps}, {lr_final}")
        self.save_hyperparameters()
        self.judge: Judge | None = None
        self.val_scores: FactorScores | None = None
        self.test_scores: FactorScores | None = None
        self.final_test_scores: dict[str, float] = {}

    # -- building ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.build_for(self.trainer.datamodule if self._trainer is not None else None, stage)

    def build_for(self, dm: Any, stage: str = "fit") -> None:
        """Build the judge for data module `dm` (its factors and frame shape); a no-op once built.
        Also called before a checkpoint is checked against this module, whose weights exist only then."""
        if self.judge is not None:
            return
        if dm is None or not getattr(dm, "factors", None):
            raise ValueError(
                "JudgeModule needs a data module with labelled `factors` (pass data: in the config)"
            )
        split = {"fit": "train", "validate": "val"}.get(stage, "test")
        sample = dm.batch(split, [0])["x"]  # (1, T, C, H, W)
        _, _, c, h, w = sample.shape
        if h != w:
            raise ValueError(f"the judge needs square frames, the data module gives {h}×{w}")
        self.build(dm.factors, frame_size=h, in_channels=c)

    def build(self, factors: Sequence[Factor], frame_size: int, in_channels: int) -> None:
        """Create the judge and metrics (by `setup`, or by hand to use the module without a Trainer)."""
        hp = self.hparams
        self.judge = Judge(
            factors,
            frame_size=frame_size,
            in_channels=in_channels,
            base_channels=hp.base_channels,
            embed_dim=hp.embed_dim,
            hidden_size=hp.hidden_size,
            head_hidden=hp.head_hidden,
            sequence_level_factors=hp.sequence_level_factors or (),
        )
        seq = self.judge.sequence_level
        self.val_scores = FactorScores(self.judge.factors, seq, prefix="val/", validate_args=False)
        self.test_scores = FactorScores(self.judge.factors, seq, prefix="test/", validate_args=False)
        self.to(self.device)

    def configure_optimizers(self):
        return torch.optim.Adam(self.judge.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas))

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # a function of global_step alone: resumed runs and DDP ranks agree, and nothing syncs the host
        hp = self.hparams
        if hp.lr_decay_steps > 0:
            lr = scheduled_lr(self.global_step, hp.lr, hp.lr_decay_start, hp.lr_decay_steps, hp.lr_final)
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] = lr

    # -- steps ----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> list[Tensor]:
        return self.judge(x)

    def loss(self, logits: list[Tensor], labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum over factors of the cross-entropy (mean over sequences or frames)."""
        per_head = {}
        for f, lg, y in zip(self.judge.factors, logits, judge_targets(self.judge, labels), strict=True):
            per_head[f.name] = F.cross_entropy(lg.flatten(0, -2), y.flatten())
        return torch.stack(list(per_head.values())).sum(), per_head

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self.judge(batch["x"])  # x: (B, T, C, H, W)
        loss, _ = self.loss(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, scores: FactorScores, split: str, batch: dict, batch_idx: int, loader) -> None:
        logits = self.judge(batch["x"])
        # mask out the DistributedSampler's padding so every sequence counts once
        valid = distributed_valid_mask(
            batch_idx,
            loader.batch_size,
            batch["x"].shape[0],
            self.trainer.datamodule.split_size(split),
            self.global_rank,
            self.trainer.world_size,
            device=self.device,
        )
        scores.update(logits, batch["labels"], valid)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(self.val_scores, "val", batch, batch_idx, self.trainer.val_dataloaders)

    def on_validation_epoch_end(self) -> None:
        out = self.val_scores.compute()  # synced over ranks; every rank calls it
        self.val_scores.reset()
        # values are already global; sync_dist only averages identical numbers (and silences a warning)
        bar = {"val/acc/static", "val/acc/dynamic"}
        self.log_dict(
            {k: v for k, v in out.items() if k.startswith("val/acc") and k not in bar}, sync_dist=True
        )
        self.log_dict({k: v for k, v in out.items() if k in bar}, prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(self.test_scores, "test", batch, batch_idx, self.trainer.test_dataloaders)

    def on_test_epoch_end(self) -> None:
        out = self.test_scores.compute()
        self.test_scores.reset()
        self.log_dict(out, sync_dist=True)

    # -- end of fit: score on the real test split, write the judge file ----------------------------
    def _n_eval_batches(self, n_batches: int) -> int:
        t = self.trainer
        if t.fast_dev_run:
            return min(n_batches, int(t.fast_dev_run))
        lim = t.limit_test_batches
        if isinstance(lim, float):
            return n_batches if lim >= 1.0 else max(1, int(n_batches * lim))
        return min(n_batches, int(lim))

    @torch.no_grad()
    def score_split(self, split: str = "test") -> dict[str, float]:
        """Scores of the judge on a whole split, every rank taking a disjoint strided shard (no padding)."""
        dm = self.trainer.datamodule
        n = dm.split_size(split)
        rank, world = self.global_rank, self.trainer.world_size
        mine = torch.arange(rank, n, world)
        bs = dm.eval_batch_size
        n_batches = self._n_eval_batches(math.ceil(n / (bs * world)))
        scores = FactorScores(self.judge.factors, self.judge.sequence_level, validate_args=False).to(
            self.device
        )
        was_training = self.judge.training
        self.judge.eval()
        for chunk in mine.split(bs)[:n_batches]:
            batch = dm.batch(split, chunk, device=self.device)
            scores.update(self.judge(batch["x"]), batch["labels"])
        self.judge.train(was_training)
        out = scores.compute()  # collective: every rank gets here
        return {k: float(v) for k, v in out.items()}

    @torch.no_grad()
    def recalibrate_batchnorm(self, n_batches: int) -> None:
        """Reset BatchNorm statistics to their average over `n_batches` random training batches.

        The batches come from a fixed-seed generator, so every rank computes the same statistics.
        """
        bns = [m for m in self.judge.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns or n_batches <= 0:
            return
        dm = self.trainer.datamodule
        n, bs = dm.split_size("train"), dm.batch_size
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        was_training = self.judge.training
        self.judge.train()
        g = torch.Generator().manual_seed(0)
        for _ in range(1 if self.trainer.fast_dev_run else n_batches):
            self.judge(dm.batch("train", torch.randint(0, n, (bs,), generator=g), device=self.device)["x"])
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        self.judge.train(was_training)

    def on_fit_end(self) -> None:
        t = self.trainer
        self.recalibrate_batchnorm(self.hparams.bn_batches)
        if self.hparams.test_after_fit:
            self.final_test_scores = self.score_split("test")
            if t.is_global_zero:
                rank_zero_info(format_scores(self.final_test_scores, self.judge.factors, "real test split"))
                if self.logger is not None:
                    self.logger.log_metrics({f"test/{k}": v for k, v in self.final_test_scores.items()})
        path = self.hparams.judge_path
        if path and t.is_global_zero:
            if t.fast_dev_run:
                rank_zero_info(f"fast_dev_run: judge file '{path}' not written")
            else:
                save_judge(self.judge, path, data_signature(t.datamodule), self.final_test_scores)
                rank_zero_info(f"judge written to '{path}'")
        t.strategy.barrier()


def format_scores(scores: dict[str, float], factors: Sequence[Factor], what: str) -> str:
    """A readable per-head table of judge scores (accuracy, ±1-bin accuracy and R² for ordinal factors)."""
    n = int(scores.get("n/sequences", 0))
    lines = [f"judge scores on the {what} ({n} sequences):"]
    for f in factors:
        kind = "static" if f.static else "dynamic"
        row = f"  {f.name:<12} {kind:<8} acc {100 * scores[f'acc/{f.name}']:7.3f}%"
        if f.ordinal:
            row += f"   ±1-bin {100 * scores[f'acc1/{f.name}']:7.3f}%   R² {scores[f'r2/{f.name}']:.4f}"
        lines.append(row)
    for k in ("acc/static", "acc/dynamic"):
        if k in scores:
            lines.append(f"  {k:<21} {100 * scores[k]:7.3f}%")
    return "\n".join(lines)
