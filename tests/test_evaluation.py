"""The evaluation protocol, checked with an oracle model and judge whose answers are known exactly."""

import json

import pytest
import torch
from helpers.oracle import FACTORS, Coded, OracleJudge, OracleModel

from sdcd.evaluation import derangement, evaluate, peers_protocol
from sdcd.results import write_results


def test_derangement_has_no_fixed_points():
    for n in [2, 3, 7, 64]:
        for _ in range(20):
            p = derangement(n, "cpu")
            assert sorted(p.tolist()) == list(range(n)) and torch.all(p != torch.arange(n))


def test_perfect_model_scores_100_on_swap_and_paired():
    dm = Coded(batch_size=8)
    res = evaluate(OracleModel(), dm, OracleJudge(), split="test", repeats=3)
    for k in ["reconstruction/acc/static", "reconstruction/acc/dynamic", "reconstruction/intervention",
              "reconstruction_mean/acc/static", "reconstruction_mean/acc/dynamic",
              "swap/acc/static", "swap/acc/dynamic", "swap_mean/acc/static", "swap_mean/acc/dynamic",
              "paired/acc/static", "paired/acc/dynamic", "sample_dynamics_mean/acc/static",
              "sample_dynamics/acc/static", "sample_static/acc/dynamic"]:
        assert res[k]["mean"] == pytest.approx(1.0) and res[k]["std"] == pytest.approx(0.0), k
    assert res["swap/acc/static_plus_dynamic"]["mean"] == pytest.approx(2.0)
    assert res["swap/n/sequences"]["mean"] == 37  # every sequence once, the uneven last batch included
    # resampled codes: the resampled factors are no longer those of A (about chance)
    assert res["sample_dynamics/acc/dynamic"]["mean"] < 0.5
    assert res["sample_static/acc/static"]["mean"] < 0.6
    # IS over the resampled heads: near the number of classes drawn from (3 of 4 colours, 5 positions)
    assert 2.0 < res["sample_static/is/colour"]["mean"] <= 3.0 + 1e-6
    assert 3.5 < res["sample_dynamics/is/pos"]["mean"] <= 5.0 + 1e-6


def test_swap_targets_come_from_the_right_source():
    """A model whose decoder takes the statics from the *dynamics* source fails the static swap score."""
    dm = Coded(batch_size=8)
    statics_of = {}  # dynamic track -> that sequence's static code
    for i in range(dm.n):
        c = OracleModel().encode(dm.batch("test", [i])["x"])
        statics_of[tuple(c.lam[0].flatten().tolist())] = c.f[0]

    class Leaky(OracleModel):
        def decode(self, f, lam):
            return super().decode(torch.stack([statics_of[tuple(row.flatten().tolist())] for row in lam]), lam)

    res = evaluate(Leaky(), dm, OracleJudge(), split="test", repeats=2, tests=("swap",))
    assert res["swap/acc/dynamic"]["mean"] == pytest.approx(1.0)
    assert res["swap/acc/static"]["mean"] < 0.6  # judged against A, but the statics came from B


def test_mean_tests_use_the_posterior_means():
    """A model whose sampled static code is useless (another sequence's) and whose mean is exact: the
    sampled reconstruction and swap fail, their mean twins and the peers' static test
    (sample_dynamics_mean) do not."""
    dm = Coded(batch_size=8)

    class NoisyPosterior(OracleModel):
        def encode(self, x, mean=False):
            c = super().encode(x)
            if mean:
                return c
            return c._replace(f=c.f.roll(1, 0))

    res = evaluate(NoisyPosterior(), dm, OracleJudge(), split="test", repeats=2,
                   tests=("reconstruction", "reconstruction_mean", "swap", "swap_mean", "sample_dynamics_mean"))
    assert res["swap/acc/static"]["mean"] < 0.7
    assert res["reconstruction/acc/static"]["mean"] < 0.7
    assert res["reconstruction_mean/acc/static"]["mean"] == pytest.approx(1.0)
    assert res["swap_mean/acc/static"]["mean"] == pytest.approx(1.0)
    assert res["swap_mean/acc/dynamic"]["mean"] == pytest.approx(1.0)
    assert res["sample_dynamics_mean/acc/static"]["mean"] == pytest.approx(1.0)
    assert "swap_mean/acc/static_plus_dynamic" not in res  # that sum is the official swap's only


def test_reconstruction_test_judges_every_factor_against_the_sequence_itself():
    """A model that decodes every sequence to the first one's frames: its reconstructions are wrong
    wherever a factor of A differs from that sequence's."""
    dm = Coded(batch_size=8)
    first = dm.batch("test", [0])

    class Constant(OracleModel):
        def decode(self, f, lam):
            return first["x"].expand(len(f), *first["x"].shape[1:])

    res = evaluate(Constant(), dm, OracleJudge(), split="test", repeats=1, tests=("reconstruction",))
    labels = dm.batch("test", torch.arange(dm.n))["labels"]  # (N, T, F)
    same = (labels == first["labels"]).double().mean((0, 1))  # how often A's factor equals the first's
    for i, f in enumerate(FACTORS):
        assert res[f"reconstruction/acc/{f.name}"]["mean"] == pytest.approx(float(same[i])), f.name


def test_evaluation_is_independent_of_batching_and_sharding():
    dm = Coded(batch_size=5)
    full = evaluate(OracleModel(), dm, OracleJudge(), split="test", repeats=1, tests=("swap", "paired"))
    small = evaluate(OracleModel(), dm, OracleJudge(), split="test", repeats=1, tests=("swap", "paired"), batch_size=3)
    for k in ["swap/acc/static", "paired/acc/dynamic", "swap/n/sequences"]:
        assert full[k]["mean"] == small[k]["mean"]


def test_max_sequences_and_missing_twins():
    dm = Coded(batch_size=8)
    res = evaluate(OracleModel(), dm, OracleJudge(), split="val", repeats=1, max_sequences=10)
    assert res["swap/n/sequences"]["mean"] == 10
    assert not any(k.startswith("paired/") for k in res)  # val has no twins


def test_bad_arguments():
    dm = Coded()
    with pytest.raises(ValueError, match="repeats"):
        evaluate(OracleModel(), dm, OracleJudge(), repeats=0)
    with pytest.raises(ValueError, match="unknown evaluation tests"):
        evaluate(OracleModel(), dm, OracleJudge(), tests=("swop",))


def test_peers_protocol_balances_classes_and_drops_last():
    dm = Coded(n=200, batch_size=8)
    res = peers_protocol(OracleModel(), dm, OracleJudge(), factor="colour", repeats=2, batch_size=16)
    counts = torch.bincount(dm.labels[:, 0, 0], minlength=4)
    expected = (4 * int(counts.min()) // 16) * 16
    assert res["peers/n_sequences"]["mean"] == expected
    assert 0.0 <= res["peers/acc/colour"]["mean"] <= 1.0
    with pytest.raises(ValueError, match="not in the data's factors"):
        peers_protocol(OracleModel(), dm, OracleJudge(), factor="action")


def test_write_results(tmp_path):
    dm = Coded()
    res = evaluate(OracleModel(), dm, OracleJudge(), split="test", repeats=2)
    j, md = write_results(tmp_path / "run", res, FACTORS, {"experiment": "x", "checkpoint": "c.ckpt", "repeats": 2})
    data = json.loads(j.read_text())
    assert data["metrics"]["swap/acc/static"]["mean"] == 1.0 and data["repeats"] == 2
    text = md.read_text()
    assert "| swap | acc/static | 100.00% |" in text and "| colour | static |" in text
    assert not list((tmp_path / "run").glob(".*"))  # no temp files left


def test_intervention_score_on_hand_computed_accuracies():
    from sdcd.evaluation import intervention_score, intervention_scores

    # sample_static keeps the dynamics: pos (5 classes) should be right, colour (4) and shape (3) at chance.
    acc = {"colour": 0.25, "shape": 1 / 3, "pos": 1.0}
    assert intervention_score(acc, FACTORS, "dynamic") == pytest.approx(1.0)  # ideal
    acc = {"colour": 1.0, "shape": 1.0, "pos": 0.6}  # statics leak through, dynamics 60%
    # kept error 0.4; others' errors 0.75 and 2/3 → mean 0.7083; score = 1 − (0.4 + 0.7083) / 2
    assert intervention_score(acc, FACTORS, "dynamic") == pytest.approx(1 - (0.4 + (0.75 + 2 / 3) / 2) / 2)
    # swap: every factor follows its source, so the score is 1 − the mean error
    assert intervention_score({"colour": 0.9, "shape": 0.6, "pos": 0.3}, FACTORS, None) == pytest.approx(0.6)
    res = {f"sample_dynamics/acc/{k}": {"mean": v, "std": 0.0} for k, v in
           {"colour": 1.0, "shape": 1.0, "pos": 0.2}.items()}
    assert intervention_scores(res, FACTORS) == {"sample_dynamics/intervention": {"mean": 1.0, "std": 0.0}}
