"""sdcd.static: the static encoder, the product of Gaussians and the RealNVP static prior."""

import math

import pytest
import torch
from helpers.flows import randomise, std_normal_log_prob

from sdcd.static import StaticEncoder, StaticPrior, product_of_gaussians


def test_product_of_gaussians_matches_the_closed_form():
    mean = torch.tensor([[[1.0], [3.0]]])  # (B=1, T=2, D=1)
    logvar = torch.log(torch.tensor([[[1.0], [3.0]]]))
    mu, var = product_of_gaussians(mean, logvar, floor=1e-6)
    # precisions 1 and 1/3: var = 1 / (4/3) = 0.75; mean = 0.75 · (1·1 + 3/3) = 1.5
    assert var.item() == pytest.approx(0.75)
    assert mu.item() == pytest.approx(1.5)


def test_product_of_gaussians_keeps_the_mean_when_variances_are_tiny():
    # T=8 frames that all say μ=1 with variance e^-12: the product's mean is 1, whatever the floor.
    mean = torch.ones(2, 8, 4)
    logvar = torch.full((2, 8, 4), -12.0)
    mu, var = product_of_gaussians(mean, logvar, floor=1e-6)
    torch.testing.assert_close(mu, torch.ones(2, 4))
    assert torch.all(var == 1e-6)  # only the returned variance is floored (exact: e^-12 / 8 ≈ 7.7e-7)
    assert math.exp(-12) / 8 < 1e-6


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_static_encoder_kinds(kind):
    enc = StaticEncoder(16, 8, 6, kind)
    mean, logvar = enc(torch.randn(3, 5, 16))
    assert mean.shape == logvar.shape == (3, 5, 6)
    if kind == "linear":  # affine in its input
        a, b = torch.randn(16), torch.randn(16)
        torch.testing.assert_close(enc(a + b)[0] - enc(b)[0], enc(a)[0] - enc(torch.zeros(16))[0])


def test_static_encoder_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="model.static_encoder must be one of mlp, linear"):
        StaticEncoder(16, 8, 6, "conv")


def test_static_prior_inverts_and_logdet():
    prior = StaticPrior(features=6, n_layers=4, hidden=16).double()
    randomise(prior)
    f = torch.randn(3, 6, dtype=torch.double)
    z, logdet = prior._transform(f)
    torch.testing.assert_close(prior._transform.inverse(z)[0], f, atol=1e-10, rtol=0)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: prior._transform(v[None])[0][0], f[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=0)
    torch.testing.assert_close(prior.log_prob(f).double(), std_normal_log_prob(z) + logdet, atol=1e-4, rtol=1e-5)
    assert prior.sample_like(7, f).shape == (7, 6)


def test_static_consistency_is_the_frames_spread_in_their_own_deviations():
    from sdcd.static import static_consistency

    mean_t = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])  # one sequence, two frames, D = 2
    logvar_t = torch.log(torch.tensor([[[4.0, 1.0], [4.0, 1.0]]]))
    mean = torch.tensor([[2.0, 0.0]])
    # ½ (1²/4 + 1²/4) on the first dimension, nothing on the second
    torch.testing.assert_close(static_consistency(mean_t, logvar_t, mean), torch.tensor(0.25))
    assert static_consistency(mean[:, None].expand(1, 2, 2), logvar_t, mean) == 0  # one mean in every frame
    mean_t.requires_grad_(True), logvar_t.requires_grad_(True)
    static_consistency(mean_t, logvar_t, mean).backward()
    assert mean_t.grad is not None and logvar_t.grad is None  # widening the posteriors cannot lower it


def test_consistency_weight_adds_the_term_to_the_loss(tiny_model_kwargs):
    from sdcd.model import SDCD

    x = torch.rand(2, 4, 3, 32, 32)
    losses = {}
    for weight in (0.0, 3.0):
        torch.manual_seed(0)
        model = SDCD(**tiny_model_kwargs, consistency_weight=weight).eval()  # eval: f_t are the means
        torch.manual_seed(1)
        losses[weight] = model.loss_terms(x, shuffle=True)
    assert "consistency" not in losses[0.0] and losses[3.0]["consistency"] > 0
    torch.testing.assert_close(losses[3.0]["loss"], losses[0.0]["loss"] + 3.0 * losses[3.0]["consistency"])
