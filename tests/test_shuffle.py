"""The ShuffleCallback schedule and what the loss conditions the flow on."""

import pytest
import torch
from helpers.data import RandomFrames
from lightning import Trainer

from sdcd.callbacks.shuffle import ShuffleCallback
from sdcd.model import SDCD


class Recorder(ShuffleCallback):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.log_ = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.log_.append((trainer.global_step, pl_module.shuffle))


@pytest.mark.parametrize("every,warmup", [(1, 0), (3, 0), (0, 0), (2, 3)])
def test_schedule_applies_on_expected_steps(every, warmup, tiny_model_kwargs):
    rec = Recorder(every=every, warmup_steps=warmup)
    trainer = Trainer(accelerator="cpu", max_steps=8, callbacks=[rec], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(SDCD(**tiny_model_kwargs), RandomFrames(batch_size=8))
    steps = [s for s, _ in rec.log_]
    assert steps == list(range(8))
    expected = [every > 0 and s >= warmup and (s - warmup) % every == 0 for s in steps]
    assert [on for _, on in rec.log_] == expected
    assert rec.shuffled == sum(expected) and rec.steps == 8


def test_schedule_is_a_pure_function_of_global_step():
    cb = ShuffleCallback(every=4, warmup_steps=10)
    assert [cb.is_shuffle_step(s) for s in range(9, 20)] == [False, True, False, False, False, True,
                                                              False, False, False, True, False]


@pytest.mark.parametrize("bad", [dict(every=-1), dict(warmup_steps=-2), dict(mode="frames")])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        ShuffleCallback(**bad)


def _capture(model):
    """Record the frame codes f_t, the aggregated f and the flow context of one loss evaluation."""
    seen = {}
    aggregate, flow_call = model.aggregate_static, model.flow.inverse_and_log_prob

    def aggregate_static(mu_t, logvar_t):
        seen["f_t"], mu, var = aggregate(mu_t, logvar_t)
        return seen["f_t"], mu, var

    def inverse_and_log_prob(x, ctx):
        seen.setdefault("context", ctx)
        return flow_call(x, ctx)

    model.aggregate_static, model.flow.inverse_and_log_prob = aggregate_static, inverse_and_log_prob
    return seen


@pytest.mark.parametrize("mode", ["batch", "sequence"])
def test_loss_uses_shuffled_codes_when_shuffling(mode, tiny_model_kwargs):
    torch.manual_seed(0)
    model = SDCD(**{**tiny_model_kwargs, "n_frames": 6})
    model.shuffle_mode = mode
    seen = _capture(model)
    x = torch.rand(5, 6, 3, 32, 32)
    terms = model.loss_terms(x, shuffle=True)
    f_t, ctx = seen["f_t"], seen["context"]
    # every context frame is one of the sequence's own frame codes, and they form a permutation
    match = (ctx[:, :, None, :] == f_t[:, None, :, :]).all(-1)  # (B, T_ctx, T_f)
    assert torch.all(match.sum(-1) == 1) and torch.all(match.sum(1) == 1)
    perms = match.float().argmax(-1)  # (B, T)
    if mode == "batch":
        assert torch.all(perms == perms[0])  # one permutation shared by the batch
    assert "nll_flow_aggregated" in terms


def test_loss_uses_aggregated_code_otherwise(tiny_model_kwargs):
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs)
    seen = _capture(model)
    terms = model.loss_terms(torch.rand(3, 4, 3, 32, 32), shuffle=False)
    ctx = seen["context"]
    assert torch.all(ctx == ctx[:, :1])  # the same code on every frame
    assert not torch.all(ctx == seen["f_t"])
    assert "nll_flow_aggregated" not in terms


def test_sequence_mode_draws_different_permutations(tiny_model_kwargs):
    torch.manual_seed(0)
    model = SDCD(**{**tiny_model_kwargs, "n_frames": 8})
    model.shuffle_mode = "sequence"
    f_t = torch.arange(8.0)[None, :, None].expand(16, 8, 2)
    perms = model.permute_frames(f_t)[:, :, 0]
    assert len({tuple(p.tolist()) for p in perms}) > 1
    assert torch.all(perms.sort(dim=1).values == torch.arange(8.0))
