"""FactorScores / JudgeMetrics against hand-computed values, and the frozen-judge holding rules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sdcd.data_modules.base import Factor
from sdcd.judge import Judge
from sdcd.metrics import FactorScores, JudgeMetrics, distributed_valid_mask

BIG = 60.0  # a logit gap that makes softmax one-hot to float64 precision (e^-60 ≈ 1e-26)


def one_hot_logits(pred: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, k).double() * BIG


def labels_for(*columns: torch.Tensor, t: int) -> torch.Tensor:
    """(B,) or (B, T) per-factor targets -> (B, T, F) int64."""
    cols = [c[:, None].expand(-1, t) if c.ndim == 1 else c for c in columns]
    return torch.stack(cols, -1).long()


def test_one_hot_spread_uniformly_gives_is_k_and_zero_conditional_entropy():
    k = 4
    f = Factor("a", k, static=True)
    m = FactorScores([f])
    pred = torch.arange(8) % k  # each class predicted twice
    m.update([one_hot_logits(pred, k)], labels_for(pred, t=3))
    out = m.compute()
    assert out["is/a"].item() == pytest.approx(k, rel=1e-6)
    assert out["h_yx/a"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["h_y/a"].item() == pytest.approx(math.log(k), rel=1e-6)
    assert out["acc/a"].item() == 1.0
    assert out["bacc/a"].item() == pytest.approx(1.0)


def test_uniform_predictions_give_is_one_and_max_conditional_entropy():
    k = 5
    m = FactorScores([Factor("a", k, static=True)])
    m.update([torch.zeros(7, k)], labels_for(torch.arange(7) % k, t=2))
    out = m.compute()
    assert out["is/a"].item() == pytest.approx(1.0, rel=1e-6)
    assert out["h_yx/a"].item() == pytest.approx(math.log(k), rel=1e-6)
    assert out["h_y/a"].item() == pytest.approx(math.log(k), rel=1e-6)


def test_soft_predictions_match_direct_formulas():
    torch.manual_seed(0)
    k, b = 3, 10
    logits = torch.randn(b, k, dtype=torch.float64)
    p = logits.softmax(-1)
    py = p.mean(0)
    eps = 1e-16
    kl = (p * ((p + eps).log() - (py + eps).log())).sum(-1).mean()
    m = FactorScores([Factor("a", k, static=True)])
    m.update([logits[:4]], labels_for(torch.zeros(4), t=2))  # two batches: sums must add up
    m.update([logits[4:]], labels_for(torch.zeros(6), t=2))
    out = m.compute()
    assert out["is/a"].item() == pytest.approx(kl.exp().item(), rel=1e-5)
    assert out["h_yx/a"].item() == pytest.approx(-(p * (p + eps).log()).sum(-1).mean().item(), rel=1e-5)
    assert out["h_y/a"].item() == pytest.approx(-(py * (py + eps).log()).sum().item(), rel=1e-5)


def test_accuracy_and_adjusted_balanced_accuracy_by_hand():
    # targets  0 0 0 0 1 1 2 ; predictions 0 0 0 1 1 0 2 ; class 3 never a target
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    m = FactorScores([Factor("c", 4, static=True)])
    m.update([one_hot_logits(pred, 4)], labels_for(y, t=1))
    out = m.compute()
    assert out["acc/c"].item() == pytest.approx(5 / 7)
    # recalls 3/4, 1/2, 1 over the 3 classes present; sklearn adjusts with chance 1/3
    bacc = (3 / 4 + 1 / 2 + 1) / 3
    assert out["bacc/c"].item() == pytest.approx((bacc - 1 / 3) / (1 - 1 / 3), rel=1e-6)


def test_r2_and_plus_minus_one_accuracy_of_an_ordinal_factor_by_hand():
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    pred = torch.tensor([0, 2, 2, 5, 4, 4])
    m = FactorScores([Factor("s", 6, static=True, ordinal=True)])
    m.update([one_hot_logits(pred, 6)], labels_for(y, t=2))
    out = m.compute()
    yf, pf = y.double(), pred.double()
    r2 = 1 - ((yf - pf) ** 2).sum() / ((yf - yf.mean()) ** 2).sum()
    assert out["r2/s"].item() == pytest.approx(r2.item(), rel=1e-6)
    assert out["acc/s"].item() == pytest.approx(3 / 6)
    assert out["acc1/s"].item() == pytest.approx(5 / 6)  # only 3 -> 5 is off by more than one bin


def test_r2_uses_the_softmax_expectation():
    # two classes with p = (0.25, 0.75): expected index 0.75 for every row
    logits = torch.tensor([[0.0, math.log(3.0)]] * 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 1])
    m = FactorScores([Factor("s", 2, static=True, ordinal=True)])
    m.update([logits], labels_for(y, t=1))
    yf = y.double()
    r2 = 1 - ((yf - 0.75) ** 2).sum() / ((yf - yf.mean()) ** 2).sum()
    assert m.compute()["r2/s"].item() == pytest.approx(r2.item(), rel=1e-6)


def test_frame_heads_are_scored_per_frame_and_aggregates_split_static_and_dynamic():
    fs = [Factor("st", 3, static=True), Factor("dy", 4, static=False)]
    st_y = torch.tensor([0, 1])
    dy_y = torch.tensor([[0, 1, 2], [3, 3, 0]])
    dy_pred = torch.tensor([[0, 1, 0], [3, 0, 0]])  # 4 of 6 frames right
    m = FactorScores(fs)
    m.update(
        [one_hot_logits(torch.tensor([0, 2]), 3), one_hot_logits(dy_pred, 4)], labels_for(st_y, dy_y, t=3)
    )
    out = m.compute()
    assert out["acc/st"].item() == pytest.approx(1 / 2)
    assert out["acc/dy"].item() == pytest.approx(4 / 6)
    assert out["acc/static"].item() == pytest.approx(1 / 2)
    assert out["acc/dynamic"].item() == pytest.approx(4 / 6)
    assert out["n/sequences"].item() == 2


def test_sequence_level_dynamic_factor_uses_the_first_frame_and_counts_as_dynamic():
    fs = [Factor("action", 3, static=False)]
    m = FactorScores(fs, sequence_level=[True])
    y = torch.tensor([[2, 2], [1, 1], [0, 0]])
    m.update([one_hot_logits(torch.tensor([2, 1, 1]), 3)], labels_for(y, t=2))
    out = m.compute()
    assert out["acc/action"].item() == pytest.approx(2 / 3)
    assert out["acc/dynamic"].item() == pytest.approx(2 / 3)
    assert "acc/static" not in out


def test_valid_mask_excludes_sequences_and_prefix_is_applied():
    f = Factor("a", 2, static=True)
    m = FactorScores([f], prefix="val/")
    y = torch.tensor([0, 1, 1])
    pred = torch.tensor([0, 1, 0])
    m.update([one_hot_logits(pred, 2)], labels_for(y, t=1), valid=torch.tensor([True, True, False]))
    out = m.compute()
    assert out["val/acc/a"].item() == 1.0
    assert out["val/n/sequences"].item() == 2


def test_reset_clears_the_sums():
    m = FactorScores([Factor("a", 2, static=True)])
    m.update([one_hot_logits(torch.tensor([1, 1]), 2)], labels_for(torch.tensor([0, 0]), t=1))
    m.reset()
    m.update([one_hot_logits(torch.tensor([0]), 2)], labels_for(torch.tensor([0]), t=1))
    out = m.compute()
    assert out["acc/a"].item() == 1.0 and out["n/sequences"].item() == 1


@pytest.mark.parametrize(
    "logits, labels, valid, match",
    [
        ([torch.zeros(2, 3)], torch.zeros(2, 1, 2, dtype=torch.long), None, "labels"),
        ([torch.zeros(2, 4)], torch.zeros(2, 1, 1, dtype=torch.long), None, "logits for 'a'"),
        ([torch.zeros(2, 3)], torch.zeros(2, 1, 1), None, "integer"),
        ([torch.zeros(2, 3)], torch.full((2, 1, 1), 3), None, "out of range"),
        ([torch.zeros(2, 3)], torch.zeros(2, 1, 1, dtype=torch.long), torch.ones(2), "valid"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(logits, labels, valid, match):
    m = FactorScores([Factor("a", 3, static=True)])
    with pytest.raises(ValueError, match=match):
        m.update(logits, labels, valid)


def test_distributed_valid_mask_marks_sampler_padding():
    # 5 items on 2 ranks, batch 2: the sampler pads to 6 by repeating item 0 at position 5 (rank 1)
    sampler = torch.utils.data.DistributedSampler(range(5), num_replicas=2, rank=1, shuffle=False)
    items = list(sampler)
    assert items == [1, 3, 0]
    masks = [distributed_valid_mask(i, 2, n, 5, rank=1, world_size=2) for i, n in ((0, 2), (1, 1))]
    assert torch.cat(masks).tolist() == [True, True, False]
    assert distributed_valid_mask(0, 4, 3, 3, rank=0, world_size=1).all()


# -- JudgeMetrics: the frozen judge ------------------------------------------------------------------
FACTORS = (Factor("color", 3, static=True), Factor("pos", 4, static=False, ordinal=True))


def tiny_judge() -> Judge:
    torch.manual_seed(0)
    return Judge(FACTORS, frame_size=8, base_channels=4, embed_dim=8, hidden_size=8, head_hidden=8)


class Parent(nn.Module):
    def __init__(self, judge: Judge):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.metric = JudgeMetrics(judge, FACTORS, prefix="test/")


def test_judge_is_frozen_and_not_part_of_the_parent_state():
    judge = tiny_judge()
    parent = Parent(judge)
    assert list(parent.state_dict()) == ["lin.weight", "lin.bias"]
    assert [n for n, _ in parent.named_parameters()] == ["lin.weight", "lin.bias"]
    assert all(not p.requires_grad for p in judge.parameters())
    parent.train()
    assert parent.lin.training and not judge.training
    parent.load_state_dict(Parent(tiny_judge()).state_dict())  # strict load works without judge keys


def test_judge_follows_device_moves_but_keeps_float32():
    judge = tiny_judge()
    parent = Parent(judge)
    moved = []
    real_to = judge.to
    judge.to = lambda *a, **k: moved.append((a, k)) or real_to(*a, **k)
    parent.to("cpu")
    assert moved and moved[-1][0][0] == torch.device("cpu")
    parent.double()
    assert next(judge.parameters()).dtype == torch.float32


def test_judge_metrics_equal_factor_scores_on_the_judge_logits_and_need_no_grad():
    judge = tiny_judge()
    x = torch.rand(3, 5, 3, 8, 8, requires_grad=True)
    labels = labels_for(torch.tensor([0, 1, 2]), torch.randint(0, 4, (3, 5)), t=5)
    jm = JudgeMetrics(judge, prefix="p/")
    jm.update(x, labels)
    ref = FactorScores(FACTORS, judge.sequence_level, prefix="p/")
    with torch.no_grad():
        ref.update(judge(x), labels)
    a, b = jm.compute(), ref.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], equal_nan=True), key


def test_judge_metrics_rejects_wrong_frames_and_mismatched_factors():
    judge = tiny_judge()
    jm = JudgeMetrics(judge)
    with pytest.raises(ValueError, match="judge input"):
        jm.update(torch.rand(2, 3, 3, 16, 16), torch.zeros(2, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        JudgeMetrics(judge, factors=[Factor("color", 3, static=True)])
