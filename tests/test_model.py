"""SDCD (src/sdcd/model.py): the two-stage recipe (stage=autoencoder, then stage=disentangle)."""

from pathlib import Path

import pytest
import torch

from sdcd.autoencoder import lowpass_sse
from sdcd.cli import main
from sdcd.model import SDCD
from sdcd.stages import sample_frames

TINY = ["--config", "tests/configs/tiny.yaml", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]


def test_autoencoder_stage_optimises_the_reconstruction_only(tiny_model_kwargs):
    model = SDCD(**tiny_model_kwargs, stage="autoencoder")
    x = torch.rand(2, 4, 3, 32, 32)
    terms = model.loss_terms(x, shuffle=True)
    assert terms["loss"] is terms["sse"] and terms["kl"] == 0 and terms["nll_flow"] == 0
    terms["loss"].backward()
    assert all(p.grad is None for p in model.flow.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_disentangle_stage_skips_the_decoder_and_freezes_the_autoencoder(tiny_model_kwargs, tmp_path):
    ae = SDCD(**tiny_model_kwargs, stage="autoencoder")
    torch.save({"state_dict": ae.state_dict()}, tmp_path / "ae.ckpt")
    model = SDCD(**tiny_model_kwargs, stage="disentangle", autoencoder_checkpoint=str(tmp_path / "ae.ckpt"))
    model.load_autoencoder(tmp_path / "ae.ckpt")
    torch.testing.assert_close(model.encoder.state_dict(), ae.encoder.state_dict())
    opt = model.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in [*model.encoder.parameters(), *model.decoder.parameters()])
    assert all(id(p) in in_opt for p in model.flow.parameters())
    model.train()
    terms = model.loss_terms(torch.rand(2, 4, 3, 32, 32), shuffle=True)
    assert terms["sse"] == 0  # not decoded in training
    terms["loss"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.static_encoder.parameters())


def test_two_stage_recipe_through_the_cli(in_tmp):
    main(["fit", *TINY, "--model.stage=autoencoder", "--trainer.max_steps=3", "--shuffle.every=0"])
    (ae_ckpt,) = Path(in_tmp).glob("runs/tiny/*/checkpoints/last.ckpt")
    ae = torch.load(ae_ckpt, weights_only=False)["state_dict"]
    cli = main(["fit", *TINY, "--model.stage=disentangle", f"--model.autoencoder_checkpoint={ae_ckpt}",
                "--trainer.max_steps=3", "--model.augmentation_weight=1.0", "--model.cycle_weight=1.0",
                "--model.cycle_reader=appearance"])
    model, dm = cli.model, cli.datamodule
    assert {"train/augmentation", "train/cycle"} <= set(cli.trainer.callback_metrics)
    cached, cached_aug = model.cached_features("train", torch.tensor([0, 5]))  # built at the first step
    with torch.no_grad():
        torch.testing.assert_close(cached, model.frame_features(dm.batch("train", [0, 5])["x"], noise=False))
    assert cached_aug.shape == cached.shape and not torch.allclose(cached_aug, cached)
    (ckpt2,) = [p for p in Path(in_tmp).glob("runs/tiny/*/checkpoints/last.ckpt") if p != ae_ckpt]
    state = torch.load(ckpt2, weights_only=False)["state_dict"]
    for k in ae:
        if k.split(".")[0] in ("encoder", "mean_net", "decoder"):
            torch.testing.assert_close(state[k], ae[k])  # frozen: exactly the stage-1 weights
    flow_changed = [not torch.equal(state[k], ae[k]) for k in ae if k.startswith("flow.")]
    assert any(flow_changed)  # while the flow trained
    assert state["appearance_subspace.cov"].abs().sum() > 0  # the cycle reader's subspace, saved for a resume
    fresh = main(["fit", *TINY, "--model.stage=disentangle", f"--model.autoencoder_checkpoint={ae_ckpt}",
                  "--trainer.max_steps=2", "--model.augmentation_weight=1.0", "--model.augmentation_copies=fresh"])
    assert "train/augmentation" in fresh.trainer.callback_metrics
    assert fresh.model.cached_features("train", torch.tensor([0, 5]))[1] is None  # no copy cached: drawn per step


def test_disentangle_stage_needs_an_autoencoder_checkpoint(tiny_model_kwargs, tmp_path):
    with pytest.raises(ValueError, match="model.stage=disentangle needs model.autoencoder_checkpoint"):
        SDCD(**tiny_model_kwargs, stage="disentangle")
    with pytest.raises(ValueError, match="model.stage must be one of joint, autoencoder, disentangle"):
        SDCD(**tiny_model_kwargs, stage="both")
    model = SDCD(**tiny_model_kwargs, stage="disentangle", autoencoder_checkpoint=str(tmp_path / "none.ckpt"))
    with pytest.raises(FileNotFoundError, match="none.ckpt' does not exist"):
        model.load_autoencoder(tmp_path / "none.ckpt")


def test_autoencoder_of_another_width_is_refused(tiny_model_kwargs, tmp_path):
    ae = SDCD(**{**tiny_model_kwargs, "base_channels": 16}, stage="autoencoder")
    torch.save({"state_dict": ae.state_dict()}, tmp_path / "ae.ckpt")
    model = SDCD(**tiny_model_kwargs, stage="disentangle", autoencoder_checkpoint=str(tmp_path / "ae.ckpt"))
    with pytest.raises(ValueError, match="its encoder does not fit this model"):
        model.load_autoencoder(tmp_path / "ae.ckpt")


@pytest.mark.parametrize("term, weight, departure", [
    ("augmentation", 2.0, dict(augmentation_loss="infonce", augmentation_colours="permute")),
    ("augmentation", 2.0, dict(augmentation_loss="mse", augmentation_colours="gain")),
    ("augmentation", 2.0, dict(augmentation_loss="swap", augmentation_colours="gain")),
    ("augmentation", 2.0, dict(augmentation_loss="swap", augmentation_colours="palette")),
    ("cycle", 3.0, {}),  # sdcd.cycle
])
def test_a_departure_term_is_added_in_training_only(tiny_model_kwargs, term, weight, departure):
    torch.manual_seed(0)
    model = SDCD(**{**tiny_model_kwargs, "channels": 3}, **{f"{term}_weight": weight}, **departure)
    x = torch.rand(4, 4, 3, 32, 32)
    terms = model.loss_terms(x, shuffle=True)
    assert terms[term] > 0
    without = terms["loss"] - weight * terms[term]
    torch.testing.assert_close(without, terms["sse"] + 0.2 * terms["kl"] + 20.0 * (
        terms["nll_flow"] + 0.0025 * terms["nll_prior"]))
    model.eval()
    assert term not in model.loss_terms(x, shuffle=False)


# Recorded with the code of commit 2af7d69, before the model was split into autoencoder.py, static.py,
# dynamic.py and guard.py: moving code must not change the parameters, their initialisation order or
# the objective.
PINNED = {
    "paper": ({}, 12_702_339, {"sse": 21905.1171875, "kl": 123.56571960449219, "nll_flow": 3263.184326171875,
                               "nll_prior": 3274.988525390625, "loss": 87357.265625}),
    "cpu": ({"n_frames": 8, "base_channels": 16, "flow_hidden": 128, "prior_hidden": 128, "lstm_hidden": 128},
            2_704_803, {"sse": 9082.521484375, "kl": 81.37875366210938, "nll_flow": 1594.6904296875,
                        "nll_prior": 1595.658935546875, "loss": 41072.390625}),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_parameter_count_and_loss_on_a_fixed_batch_are_pinned(name):
    kwargs, n_params, expected = PINNED[name]
    torch.manual_seed(0)
    model = SDCD(**kwargs).train()
    assert sum(p.numel() for p in model.parameters()) == n_params
    torch.manual_seed(1)
    t = kwargs.get("n_frames", 16)
    terms = model.loss_terms(torch.rand(2, t, 3, 64, 64), shuffle=True)
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-5), key


def test_lowpass_sse_counts_a_wrong_shade_as_the_sse_and_pixel_noise_not_at_all():
    x = torch.rand(2, 3, 3, 8, 8)
    shade = x + 0.1  # the whole frame one shade off: a low-frequency error
    sse = ((shade - x) ** 2).flatten(1).sum(1).mean()
    torch.testing.assert_close(lowpass_sse(shade, x, 4), sse)
    stripes = torch.zeros_like(x)
    stripes[..., ::2, :], stripes[..., 1::2, :] = 0.1, -0.1  # alternates inside every 4×4 block
    assert lowpass_sse(x + stripes, x, 4) < 1e-9
    with pytest.raises(ValueError, match="lowpass_kernel=3 must divide the frame size"):
        lowpass_sse(shade, x, 3)


def test_lowpass_weight_adds_the_term_to_the_loss_not_to_the_logged_sse(tiny_model_kwargs):
    model = SDCD(**{**tiny_model_kwargs, "feature_noise": 0.0}, stage="autoencoder", lowpass_weight=10.0,
                 lowpass_kernel=4)
    x = torch.rand(2, 4, 3, 32, 32)
    terms = model.loss_terms(x, shuffle=False)
    recon = model.decode_features(model.frame_features(x, noise=False))
    torch.testing.assert_close(terms["sse"], ((recon - x) ** 2).flatten(1).sum(1).mean())
    torch.testing.assert_close(terms["loss"], terms["sse"] + 10.0 * lowpass_sse(recon, x, 4))
    with pytest.raises(ValueError, match="model.lowpass_kernel=3 must divide model.frame_size=32"):
        SDCD(**tiny_model_kwargs, lowpass_weight=1.0, lowpass_kernel=3)


def test_sample_frames_draws_k_distinct_frames_per_sequence_in_time_order():
    x = torch.arange(3 * 8, dtype=torch.float32).reshape(3, 8, 1, 1, 1).expand(3, 8, 2, 4, 4)
    torch.manual_seed(0)
    y = sample_frames(x, 3)
    assert y.shape == (3, 3, 2, 4, 4)
    t = y[:, :, 0, 0, 0] - 8 * torch.arange(3)[:, None]  # the frame index each row kept
    assert ((t >= 0) & (t < 8)).all() and (t.diff(dim=1) > 0).all()  # its own frames, distinct, in order
    assert len({tuple(r.tolist()) for r in t}) > 1  # drawn per row
    assert sample_frames(x, 8) is x


def test_autoencoder_frames_reconstructs_only_the_drawn_frames_in_training(tiny_model_kwargs):
    model = SDCD(**{**tiny_model_kwargs, "feature_noise": 0.0}, stage="autoencoder", autoencoder_frames=2)
    x = torch.rand(2, 4, 3, 32, 32)
    torch.manual_seed(1)
    kept = sample_frames(x, 2)
    torch.manual_seed(1)
    terms = model.loss_terms(x, shuffle=False)
    recon = model.decode_features(model.frame_features(kept, noise=False))
    torch.testing.assert_close(terms["sse"], ((recon - kept) ** 2).flatten(1).sum(1).mean())
    model.eval()  # validation and test reconstruct every frame
    full = model.decode_features(model.frame_features(x, noise=False))
    torch.testing.assert_close(model.loss_terms(x, shuffle=False)["sse"], ((full - x) ** 2).flatten(1).sum(1).mean())


def test_autoencoder_frames_is_checked(tiny_model_kwargs):
    with pytest.raises(ValueError, match="model.autoencoder_frames=2 subsamples the frames of stage 1 only"):
        SDCD(**tiny_model_kwargs, autoencoder_frames=2)
    with pytest.raises(ValueError, match="model.autoencoder_frames must be between 0 .all. and model.n_frames=4"):
        SDCD(**tiny_model_kwargs, stage="autoencoder", autoencoder_frames=5)


def test_the_cycle_term_starts_at_cycle_start_through_the_cli(in_tmp):
    """The switch is set from global_step by the training loop: after 3 steps a term starting at step 2
    has been charged (and logged), one starting at step 10 has not."""
    main(["fit", *TINY, "--model.stage=autoencoder", "--trainer.max_steps=2", "--shuffle.every=0"])
    (ae_ckpt,) = Path(in_tmp).glob("runs/tiny/*/checkpoints/last.ckpt")
    args = ["fit", *TINY, "--model.stage=disentangle", f"--model.autoencoder_checkpoint={ae_ckpt}",
            "--trainer.max_steps=3", "--model.cycle_weight=1.0", "--model.cycle_reader=invariant"]
    late = main([*args, "--model.cycle_start=10"])
    assert "train/cycle" not in late.trainer.callback_metrics and not late.model.cycle_active
    early = main([*args, "--model.cycle_start=2", "--model.cycle_code=mean", "--model.cycle_anchor=true"])
    assert "train/cycle" in early.trainer.callback_metrics and early.model.cycle_active
    assert early.model.hparams.cycle_code == "mean" and early.model.hparams.cycle_anchor
