"""sdcd.cycle: the swap-cycle departure."""

import copy

import pytest
import torch
from einops import repeat

from sdcd.cycle import swap_cycle_term
from sdcd.model import SDCD
from sdcd.static import product_of_gaussians


def test_one_sequence_cycles_to_itself_so_only_the_sampling_noise_of_f_is_charged(tiny_model_kwargs):
    """With B = 1 the "next row" is the row itself: h(h⁻¹(e, f), f) = e, the reader finds q(f | e) again,
    and the term is ½‖ε‖² for the sample f = μ + σ·ε."""
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs, cycle_reader="fixed").eval()  # eval: no frame-wise samples
    e = 3 * torch.randn(1, 4, 16)
    torch.manual_seed(1)
    term = swap_cycle_term(model, e)
    torch.manual_seed(1)
    _, mu, _ = model.static_posterior(e)
    eps = torch.randn_like(mu)
    torch.testing.assert_close(term, 0.5 * (eps**2).sum(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("reader", ["fixed", "trained"])
def test_the_static_encoder_learns_as_the_reader_only_when_trained(tiny_model_kwargs, reader):
    """The flow and the static code of A learn from the term. With the fixed reader the static encoder
    learns only through f_A, never as the reader: its gradients equal those of the same expression read
    by a frozen copy; with the trained reader they differ by the reader's own gradient."""
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs, cycle_reader=reader).train()
    e = 3 * torch.randn(6, 4, 16)
    torch.manual_seed(2)
    swap_cycle_term(model, e).backward()
    got = [p.grad.clone() for p in model.static_encoder.parameters()]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.flow.parameters())

    model.zero_grad()
    frozen = copy.deepcopy(model.static_encoder).requires_grad_(False)
    torch.manual_seed(2)
    _, mu_a, var_a = model.static_posterior(e)
    f_a = mu_a + var_a.sqrt() * torch.randn_like(mu_a)
    ctx = repeat(f_a, "b d -> b t d", t=4)
    lam, _ = model.flow.inverse_and_log_prob(e, ctx)
    mu_ab, _ = product_of_gaussians(*frozen(model.flow.generate(lam.roll(1, 0), ctx)), 1e-6)
    (0.5 * ((mu_ab - f_a.detach()) ** 2 / var_a.detach()).sum(1).mean()).backward()
    rel = [((g - p.grad).abs().max() / g.abs().max()).item() for g, p in zip(got, model.static_encoder.parameters())]
    if reader == "fixed":
        assert max(rel) < 1e-4
    else:
        assert max(rel) > 0.5


def test_a_negative_cycle_weight_or_an_unknown_reader_is_refused(tiny_model_kwargs):
    with pytest.raises(ValueError, match="cycle_weight"):
        SDCD(**tiny_model_kwargs, cycle_weight=-1.0)
    with pytest.raises(ValueError, match="cycle_reader"):
        SDCD(**tiny_model_kwargs, cycle_reader="frozen")
    with pytest.raises(ValueError, match="cycle_form"):
        SDCD(**tiny_model_kwargs, cycle_form="both")


def test_the_pair_form_of_one_sequence_charges_the_sum_of_its_two_readings(tiny_model_kwargs):
    """With B = 1 both swaps of the "pair" are the sequence itself: (2μ − 2f)² / 2σ² = 2·(μ − f)² / σ²,
    twice the "each" form's value for the same sample of f."""
    torch.manual_seed(0)
    each = SDCD(**tiny_model_kwargs).eval()
    pair = SDCD(**tiny_model_kwargs, cycle_form="pair").eval()
    pair.load_state_dict(each.state_dict())
    e = 3 * torch.randn(1, 4, 16)
    torch.manual_seed(1)
    one = swap_cycle_term(each, e)
    torch.manual_seed(1)
    torch.testing.assert_close(swap_cycle_term(pair, e), 2 * one, rtol=1e-3, atol=1e-3)
