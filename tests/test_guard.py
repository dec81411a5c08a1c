"""Numerical guards: non-finite losses/gradients never reach the weights; K in a row stop training."""

import pytest
import torch
from helpers.data import RandomFrames
from lightning import Callback, Trainer

from sdcd.guard import NonFiniteLossError
from sdcd.model import SDCD


class Poison(SDCD):
    """Makes one loss term NaN on the listed global steps."""

    def __init__(self, bad_steps=(), term="nll_flow", **kw):
        super().__init__(**kw)
        self.bad_steps, self.term = set(bad_steps), term

    def loss_terms(self, x, shuffle):
        terms = super().loss_terms(x, shuffle)
        if self.training and self.global_step in self.bad_steps:
            terms[self.term] = terms[self.term] * float("nan")
            terms["loss"] = terms["loss"] + terms[self.term]
        return terms


class Snapshots(Callback):
    def __init__(self):
        self.before, self.after = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step - 1] = [p.detach().clone() for p in pl_module.parameters()]


def _fit(model, steps, callbacks=()):
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=list(callbacks))
    trainer.fit(model, RandomFrames(batch_size=8))
    return trainer


def test_bad_step_is_skipped_and_counted(tiny_model_kwargs):
    torch.manual_seed(0)
    snap = Snapshots()
    model = Poison(bad_steps={2, 3}, **tiny_model_kwargs)
    _fit(model, 6, [snap])
    for step in range(6):
        changed = any(not torch.equal(a, b) for a, b in zip(snap.before[step], snap.after[step]))
        assert changed == (step not in {2, 3}), step  # bad steps leave every weight untouched
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert int(model.guard.state["skipped"]) == 2 and int(model.guard.state["streak"]) == 0


def test_consecutive_bad_steps_stop_training_naming_the_term(tiny_model_kwargs):
    torch.manual_seed(0)
    model = Poison(bad_steps=set(range(3, 100)), term="kl", nonfinite_patience=4, **tiny_model_kwargs)
    with pytest.raises(NonFiniteLossError, match=r"started at step 3 with non-finite loss term\(s\) kl") as err:
        _fit(model, 50)
    assert "consecutive training steps" in str(err.value)
    assert model.global_step <= 3 + 2 * 4  # stopped within two checks of the streak reaching K
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_gradient_alone_is_caught(tiny_model_kwargs):
    torch.manual_seed(0)
    model = SDCD(nonfinite_patience=2, **tiny_model_kwargs)
    model.decoder.net[-2].weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(NonFiniteLossError, match="a non-finite gradient"):
        _fit(model, 20)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_patience_zero_keeps_training(tiny_model_kwargs):
    model = Poison(bad_steps=set(range(1, 8)), nonfinite_patience=0, **tiny_model_kwargs)
    trainer = _fit(model, 8)
    assert trainer.global_step == 8 and int(model.guard.state["skipped"]) == 7
