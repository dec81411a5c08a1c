"""The optional learning-rate decay (sdcd.interface.scheduled_lr): its shape, that training follows it,
and that a run resumed with a schedule it did not have gets the schedule's rate, not the saved one."""

import math

import pytest
from helpers.tiny_run import fit
from lightning import Callback

from sdcd.interface import scheduled_lr
from sdcd.model import SDCD


def test_scheduled_lr_shape():
    lr = 2e-3
    assert scheduled_lr(500, lr) == lr  # no decay asked for
    assert scheduled_lr(99, lr, decay_start=100, decay_steps=50) == lr
    assert scheduled_lr(100, lr, 100, 50) == pytest.approx(lr)
    assert scheduled_lr(125, lr, 100, 50, final=0.0) == pytest.approx(lr / 2)  # cosine midpoint
    assert scheduled_lr(150, lr, 100, 50, final=0.1) == pytest.approx(lr * 0.1)
    assert scheduled_lr(10_000, lr, 100, 50, final=0.1) == pytest.approx(lr * 0.1)  # held after the end
    values = [scheduled_lr(s, lr, 100, 50) for s in range(100, 151)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # monotone


class LRs(Callback):
    """The optimizer's lr at each optimizer step (read after the model's hook set it)."""

    def __init__(self):
        self.seen: dict[int, float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.seen[trainer.global_step] = optimizer.param_groups[0]["lr"]


def test_training_follows_the_schedule(tmp_path):
    lrs = LRs()
    kw = dict(lr=1e-3, lr_decay_start=2, lr_decay_steps=4, lr_final=0.1)
    fit(tmp_path, 8, lrs, **kw)
    assert sorted(lrs.seen) == list(range(8))
    for step, value in lrs.seen.items():
        assert value == pytest.approx(scheduled_lr(step, 1e-3, 2, 4, 0.1)), step
    assert lrs.seen[0] == pytest.approx(1e-3) and lrs.seen[7] == pytest.approx(1e-4)


def test_resume_with_a_new_schedule(tmp_path):
    # a constant-lr run, then resumed from its checkpoint with a decay: the decay's rate wins over the
    # lr stored in the optimizer state
    fit(tmp_path / "a", 4)
    lrs = LRs()
    fit(tmp_path / "b", 8, lrs, ckpt_path=str(tmp_path / "a" / "last.ckpt"), lr=1e-3, lr_decay_start=4,
        lr_decay_steps=4, lr_final=0.2)
    assert sorted(lrs.seen) == [4, 5, 6, 7]
    assert lrs.seen[6] == pytest.approx(1e-3 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 2))))


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="model.lr_decay_steps must be ≥ 0"):
        SDCD(n_frames=4, frame_size=16, base_channels=4, latent_dim=8, lr_decay_steps=-1)
    with pytest.raises(ValueError, match="model.lr_final must be ≥ 0"):
        SDCD(n_frames=4, frame_size=16, base_channels=4, latent_dim=8, lr_final=-0.5)


def test_judge_training_follows_the_schedule(in_tmp):
    # the judge takes the same cosine decay (model.lr_decay_*), keyed on global_step
    from sdcd.cli import main

    cli = main(["--config", "tests/configs/tiny_judge.yaml", "--trainer.max_epochs=2",
                "--data.n_train=64", "--data.n_val=16", "--data.n_test=16", "--data.batch_size=16",
                "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--model.judge_path=null",
                "--model.bn_batches=0", "--model.test_after_fit=false", "--model.lr_decay_start=2",
                "--model.lr_decay_steps=4", "--model.lr_final=0.1"], run=False)
    lrs = LRs()
    cli.trainer.callbacks.append(lrs)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert sorted(lrs.seen) == list(range(8))
    for step, value in lrs.seen.items():
        assert value == pytest.approx(scheduled_lr(step, 1e-3, 2, 4, 0.1)), step
    assert lrs.seen[7] == pytest.approx(1e-4)


def test_bad_judge_schedule_arguments():
    from sdcd.judge_training import JudgeModule

    with pytest.raises(ValueError, match="model.lr_decay_start and model.lr_decay_steps must be >= 0"):
        JudgeModule(lr_decay_steps=-1)
