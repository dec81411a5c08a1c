"""sdcd.baselines: DSVAE and DBSE — their ELBO terms on hand-checkable cases, the interface, the CLI,
and the evaluation protocol run on them with a judge."""

import pytest
import torch
import yaml
from conftest import EXPERIMENTS

from sdcd.baselines import DBSE, DSVAE, gaussian_kl
from sdcd.data_modules.dsprites import MovingDSpritesDataModule
from sdcd.evaluation import evaluate
from sdcd.interface import SequentialDisentangler
from sdcd.judge import Judge
from sdcd.stages import load_autoencoder

SMALL = dict(n_frames=4, frame_size=32, base_channels=8, feature_dim=16, static_dim=8, dynamic_dim=4,
             rnn_hidden=16, prior_hidden=16)


def test_gaussian_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(5, 3) for _ in range(4))
    q = torch.distributions.Normal(mu_q, (0.5 * lv_q).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * lv_p).exp())
    torch.testing.assert_close(gaussian_kl(mu_q, lv_q, mu_p, lv_p), torch.distributions.kl_divergence(q, p).sum(-1))
    # against N(0, I) by hand: ½ Σ (σ² + μ² − 1 − log σ²)
    mu, lv = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    expected = 0.5 * ((1 + 1 - 1 - 0) + (torch.e**2 + 0 - 1 - 2))
    assert gaussian_kl(mu, lv, torch.zeros(1, 2), torch.zeros(1, 2)).item() == pytest.approx(expected)


@pytest.mark.parametrize("cls", [DSVAE, DBSE])
def test_interface_shapes_and_the_loss_is_the_weighted_sum(cls):
    torch.manual_seed(0)
    model = cls(**SMALL, kl_static_weight=0.5, kl_dynamic_weight=2.0)
    assert isinstance(model, SequentialDisentangler)
    x = torch.rand(3, 4, 3, 32, 32)
    codes = model.encode(x)
    assert codes.f.shape == (3, 8) and codes.lam.shape == (3, 4, 4) and codes.features.shape == (3, 4, 16)
    assert model.decode(codes.f, codes.lam).shape == x.shape
    assert model.sample_static(5).shape == (5, 8) and model.sample_dynamics(5).shape == (5, 4, 4)
    assert model.sample_dynamics(2, mean=True).shape == (2, 4, 4)
    t = model.loss_terms(x)
    assert t["kl_static"] >= 0 and t["kl_dynamic"] >= 0
    expected = t["sse"] + 0.5 * t["kl_static"] + 2.0 * t["kl_dynamic"]
    if cls is DBSE:
        expected = expected + 0.2 * t["sse_first"]
    torch.testing.assert_close(t["loss"], expected)
    t["loss"].backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_dbse_static_code_sees_only_the_first_frame_and_dynamics_only_changes():
    torch.manual_seed(0)
    model = DBSE(**SMALL).eval()
    h = torch.randn(2, 4, 16)
    later = h.clone()
    later[:, 1:] += torch.randn(2, 3, 16)  # other frames 2..T
    mu_f, *_ = model.posteriors(h)
    torch.testing.assert_close(model.posteriors(later)[0], mu_f)
    shifted = h + torch.randn(2, 1, 16)  # the same offset on every frame: nothing *changed*
    torch.testing.assert_close(model.posteriors(shifted)[2], model.posteriors(h)[2])


def test_dsvae_static_code_sees_every_frame():
    torch.manual_seed(0)
    model = DSVAE(**SMALL).eval()
    h = torch.randn(2, 4, 16)
    later = h.clone()
    later[:, -1] += 1.0
    assert not torch.allclose(model.posteriors(later)[0], model.posteriors(h)[0])


@pytest.mark.parametrize("cls", [DSVAE, DBSE])
def test_the_evaluation_protocol_runs_on_a_baseline(cls):
    """The protocol talks to the interface only: an (untrained) baseline is scored end to end by a
    (tiny, untrained) judge on tiny Moving dSprites, every test and the intervention scores."""
    torch.manual_seed(0)
    dm = MovingDSpritesDataModule(variant="cond", n_train=8, n_val=4, n_test=8, n_frames=4, frame_size=32,
                                  batch_size=4, eval_batch_size=4, seed=0)
    dm.setup("test")
    judge = Judge(dm.factors, frame_size=32, base_channels=8, embed_dim=16, hidden_size=16, head_hidden=16).eval()
    results = evaluate(cls(**SMALL).eval(), dm, judge, repeats=2)
    for test in ("swap", "sample_static", "sample_dynamics", "sample_dynamics_mean", "paired"):
        assert results[f"{test}/n/sequences"]["mean"] == 8
        assert 0.0 <= results[f"{test}/acc/static"]["mean"] <= 1.0
    assert 0.0 <= results["swap/intervention"]["mean"] <= 1.0


@pytest.mark.parametrize("base_name, name", [("dsprites_small", "dsprites_small_dsvae"),
                                             ("dsprites_small", "dsprites_small_dbse"),
                                             ("lpc_shuffle_cpu", "lpc_dsvae_cpu"), ("lpc_shuffle_cpu", "lpc_dbse_cpu")])
def test_every_baseline_config_differs_from_its_sdcd_recipe_only_in_the_model(base_name, name):
    base = yaml.safe_load((EXPERIMENTS / f"{base_name}.yaml").read_text())
    other = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    for cfg in (base, other):
        cfg.pop("model"), cfg["shuffle"].pop("every")
    assert other == base


TWO_STAGE = dict(SMALL, feature_dim=16)  # the tiny SDCD autoencoder's latent_dim


def _stage1(tmp_path):
    """An (untrained) SDCD stage-1 checkpoint at the tiny size, and its autoencoder."""
    from sdcd.model import SDCD

    torch.manual_seed(1)
    ae = SDCD(n_frames=4, frame_size=32, base_channels=8, latent_dim=16, stage="autoencoder")
    torch.save({"state_dict": ae.state_dict()}, tmp_path / "ae.ckpt")
    return tmp_path / "ae.ckpt", ae


@pytest.mark.parametrize("cls", [DSVAE, DBSE])
def test_two_stage_baseline_trains_on_the_frozen_features_of_sdcds_autoencoder(cls, tmp_path):
    path, ae = _stage1(tmp_path)
    torch.manual_seed(0)
    model = cls(**TWO_STAGE, stage="disentangle", autoencoder_checkpoint=str(path))
    load_autoencoder(model, path)
    for name in ("encoder", "mean_net", "decoder"):
        for (k, v), w in zip(getattr(model, name).state_dict().items(), getattr(ae, name).state_dict().values()):
            torch.testing.assert_close(v, w, msg=f"{name}.{k}")
        assert not any(p.requires_grad for p in getattr(model, name).parameters())
    x = torch.rand(3, 4, 3, 32, 32)
    # the features are SDCD's frozen ones (noise-free here), and the data of the ELBO
    torch.testing.assert_close(model.frame_features(x, noise=False), ae.frame_features(x, noise=False))
    h = torch.randn(3, 4, 16)
    torch.manual_seed(2)
    terms, f, z, target = model.elbo_terms(x, h)
    assert target is h
    torch.testing.assert_close(terms["sse"], ((model.reconstruct(f, z) - h) ** 2).sum((1, 2)).mean())
    model.loss_terms(x, h=h)["loss"].backward()
    assert all(p.grad is None for p in model.encoder.parameters()) and all(
        p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is not None for p in model.feature_decoder.parameters())
    codes = model.encode(x)
    assert codes.features.shape == (3, 4, 16)
    frames = model.decode(codes.f, codes.lam)  # decoded features drawn by the frozen frame decoder
    assert frames.shape == x.shape
    torch.testing.assert_close(frames, ae.decode_features(model.reconstruct(codes.f, codes.lam)))


def test_two_stage_baseline_needs_an_autoencoder_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="model.stage=disentangle needs model.autoencoder_checkpoint"):
        DSVAE(**TWO_STAGE, stage="disentangle")
    with pytest.raises(ValueError, match="model.stage must be one of joint, disentangle, got 'autoencoder'"):
        DSVAE(**TWO_STAGE, stage="autoencoder")
    model = DBSE(**TWO_STAGE, stage="disentangle", autoencoder_checkpoint=str(tmp_path / "nope.ckpt"))
    with pytest.raises(FileNotFoundError, match="nope.ckpt' does not exist"):
        load_autoencoder(model, tmp_path / "nope.ckpt")


@pytest.mark.slow
def test_the_comparison_script_runs_end_to_end(tmp_path):
    """experiments/baselines_cpu.sh at smoke size: two judges, 4 methods × 2 variants × 1 seed, the table
    and the plot (about 3 minutes on 2 cores)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "OUT": str(tmp_path / "out"), "JUDGES": str(tmp_path / "judges"), "SEEDS": "0",
           "STEPS": "2", "PY": sys.executable, "JOBS": "2",
           "DATA_ARGS": "--data.n_train=64 --data.n_val=16 --data.n_test=32",
           "JUDGE_ARGS": "--trainer.max_epochs=1", "ARGS": "--trainer.val_check_interval=1"}
    out = subprocess.run(["bash", str(ROOT / "experiments" / "baselines_cpu.sh")], env=env, capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = (tmp_path / "out" / "table.md").read_text()
    for exp in ("cond-sdcd_shuffle", "cond-sdcd_noshuffle", "cond-dsvae", "cond-dbse", "simple-dbse"):
        assert f"| {exp} | 1 |" in table
    assert (tmp_path / "out" / "plot.png").stat().st_size > 1000
