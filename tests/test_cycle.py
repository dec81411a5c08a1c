"""sdcd.cycle: the swap-cycle departure."""

import copy

import pytest
import torch
from einops import repeat

from sdcd.checkpointing import check_checkpoint
from sdcd.cycle import AppearanceSubspace, swap_cycle_term
from sdcd.model import SDCD
from sdcd.static import product_of_gaussians


def swap_by_hand(model, e, f):
    """e_AB = h(λ_B, f_A) written out: e: (B, T, D), f: (B, D); row i with the dynamics of row i−1."""
    ctx = repeat(f, "b d -> b t d", t=e.shape[1])
    lam, _ = model.flow.inverse_and_log_prob(e, ctx)
    return model.flow.generate(lam.roll(1, 0), ctx)


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
    mu_ab, _ = product_of_gaussians(*frozen(swap_by_hand(model, e, f_a)), 1e-6)
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


@pytest.mark.parametrize("mass, kept", [(0.5, 1), (0.8, 2), (1.0, 3)])
def test_the_appearance_subspace_keeps_the_fewest_leading_directions_holding_its_mass(mass, kept):
    """Moves with covariance Q·diag(4, 2, 1, 0)·Qᵀ: the directions before the k-th hold 0, 4/7, 6/7 of
    the trace; the projector is on the first `kept` columns of Q. One update is the batch's own
    covariance (the running average is bias-corrected)."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4))
    delta = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.0]).mul(4).sqrt()) @ q.T  # rows: 4 moves, Δᵀ Δ / 4 = Q diag Qᵀ
    sub = AppearanceSubspace(4, mass=mass, momentum=0.9)
    sub.update(delta)
    torch.testing.assert_close(sub.cov / sub.weight, q @ torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.0])) @ q.T,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sub.projector(), q[:, :kept] @ q[:, :kept].T, rtol=1e-4, atol=1e-4)
    assert sub.dims() == kept


def _appearance_model(tiny_model_kwargs, axes):
    """A model with the "appearance" reader whose subspace is (almost exactly) the coordinate axes `axes`:
    its running covariance is set to their indicator with a momentum so close to 1 that the term's own
    update cannot move it."""
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs, cycle_weight=1.0, cycle_reader="appearance", augmentation_weight=1.0,
                 cycle_subspace_momentum=1 - 1e-9).train()
    mask = torch.zeros(16)
    mask[axes] = 1.0
    model.appearance_subspace.cov.copy_(torch.diag(mask))
    model.appearance_subspace.weight.fill_(1.0)
    return model


def test_the_appearance_reader_charges_only_the_residual_in_its_subspace(tiny_model_kwargs):
    """½‖r‖² = ½‖P r‖² + ½‖(I − P) r‖²: the term read in a subspace and in its complement adds up to the
    fixed reader's term, for the same batch and samples."""
    e, e_aug = 3 * torch.randn(6, 4, 16), 3 * torch.randn(6, 4, 16)
    first = _appearance_model(tiny_model_kwargs, list(range(5)))
    rest = _appearance_model(tiny_model_kwargs, list(range(5, 16)))
    torch.manual_seed(0)
    fixed = SDCD(**tiny_model_kwargs, cycle_reader="fixed").train()
    values = []
    for model in (first, rest, fixed):
        torch.manual_seed(3)
        values.append(swap_cycle_term(model, e, e_aug))
    assert 0 < values[0] < values[2] and 0 < values[1] < values[2]
    torch.testing.assert_close(values[0] + values[1], values[2], rtol=1e-4, atol=1e-3)


def test_the_appearance_reader_needs_the_colour_augmentation(tiny_model_kwargs):
    with pytest.raises(ValueError, match="needs model.augmentation_weight > 0"):
        SDCD(**tiny_model_kwargs, cycle_weight=1.0, cycle_reader="appearance")
    with pytest.raises(ValueError, match="cycle_subspace_mass must be in"):
        SDCD(**tiny_model_kwargs, cycle_subspace_mass=0.0)
    with pytest.raises(ValueError, match="cycle_subspace_momentum must be in"):
        SDCD(**tiny_model_kwargs, cycle_subspace_momentum=1.0)
    model = SDCD(**tiny_model_kwargs, cycle_weight=1.0, cycle_reader="appearance", augmentation_weight=1.0)
    with pytest.raises(ValueError, match="needs the colour-changed copy"):
        swap_cycle_term(model, torch.randn(2, 4, 16))


def test_a_resumed_run_can_switch_the_appearance_reader_on_or_off(tiny_model_kwargs):
    """The resume check (sdcd.checkpointing) accepts it — the other settings are only warned about — and
    the subspace starts empty."""
    plain = SDCD(**tiny_model_kwargs)
    reader = SDCD(**tiny_model_kwargs, cycle_weight=1.0, cycle_reader="appearance", augmentation_weight=1.0)
    checkpoint = {"state_dict": dict(plain.state_dict()), "hyper_parameters": dict(plain.hparams)}
    with pytest.warns(UserWarning, match="cycle_reader"):
        check_checkpoint(checkpoint, reader)
    with pytest.raises(ValueError, match="static_encoder"):  # other missing weights are still refused
        check_checkpoint({"state_dict": {k: v for k, v in plain.state_dict().items() if "static_encoder" not in k}},
                         reader)
    reader.on_load_checkpoint(checkpoint)  # what Lightning calls before loading the state on resume
    reader.load_state_dict(checkpoint["state_dict"])  # strict
    assert reader.appearance_subspace.weight == 0  # starts empty
    checkpoint = {"state_dict": dict(reader.state_dict())}
    plain.on_load_checkpoint(checkpoint)
    plain.load_state_dict(checkpoint["state_dict"])


def test_the_invariant_reader_of_one_sequence_reads_its_own_mean_and_charges_nothing(tiny_model_kwargs):
    """With B = 1, h(h⁻¹(e, f), f) = e: the reader reads A's own posterior mean, the term is zero
    whatever f's sample (the target is the mean, not the sample)."""
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs, cycle_reader="invariant").train()
    term = swap_cycle_term(model, 3 * torch.randn(1, 4, 16))
    assert term.abs() < 1e-3


def test_only_the_invariant_reader_learns_and_it_matches_the_term_by_hand(tiny_model_kwargs):
    """The flow gets no gradient from the "invariant" term (e_AB is made without one); the static encoder
    does, on both sides (the reading of e_AB and A's own mean); its value is ½ Σ (μ(e_AB) − μ_A)² / σ²_A."""
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs, cycle_reader="invariant").train()
    e = 3 * torch.randn(6, 4, 16)
    torch.manual_seed(2)
    term = swap_cycle_term(model, e)
    term.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.flow.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.static_encoder.parameters())

    torch.manual_seed(2)
    with torch.no_grad():
        _, mu_a, var_a = model.static_posterior(e)  # the same frame-wise samples as inside the term
        f_a = mu_a + var_a.sqrt() * torch.randn_like(mu_a)
        mu_ab, _ = product_of_gaussians(*model.static_encoder(swap_by_hand(model, e, f_a)), 1e-6)
    torch.testing.assert_close(term.detach(), 0.5 * ((mu_ab - mu_a) ** 2 / var_a).sum(1).mean(), rtol=1e-4, atol=1e-3)


def test_the_cycle_term_is_charged_from_cycle_start_on(tiny_model_kwargs):
    """cycle_start: no "cycle" term before that step; the switch is set from global_step when a training
    batch starts (as the lr schedule is)."""
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs, cycle_weight=1.0, cycle_start=3).train()
    x = torch.rand(2, 4, 3, 32, 32)
    assert "cycle" not in model.loss_terms(x, shuffle=True)
    model.on_train_batch_start(None, 0)  # global_step is 0 without a trainer
    assert not model.cycle_active
    model.cycle_active = True  # what on_train_batch_start sets once global_step ≥ 3
    assert "cycle" in model.loss_terms(x, shuffle=True)
    assert SDCD(**tiny_model_kwargs, cycle_weight=1.0).cycle_active
    with pytest.raises(ValueError, match="cycle_start"):
        SDCD(**tiny_model_kwargs, cycle_start=-1)


def test_batch_units_charge_each_dimension_in_its_spread_across_the_batch(tiny_model_kwargs):
    """cycle_units=batch: the same residual as in posterior units, divided by the target's standard
    deviation over the batch (per dimension) instead of the posterior's."""
    e = 3 * torch.randn(6, 4, 16)
    terms = {}
    for units in ("posterior", "batch"):
        torch.manual_seed(0)
        model = SDCD(**tiny_model_kwargs, cycle_reader="invariant", cycle_units=units).train()
        torch.manual_seed(2)
        terms[units] = swap_cycle_term(model, e)
    torch.manual_seed(2)
    with torch.no_grad():
        _, mu_a, var_a = model.static_posterior(e)
        f_a = mu_a + var_a.sqrt() * torch.randn_like(mu_a)
        mu_ab, _ = product_of_gaussians(*model.static_encoder(swap_by_hand(model, e, f_a)), 1e-6)
    by_hand = {"posterior": 0.5 * ((mu_ab - mu_a) ** 2 / var_a).sum(1).mean(),
               "batch": 0.5 * ((mu_ab - mu_a) ** 2 / mu_a.var(0, keepdim=True)).sum(1).mean()}
    for units in terms:
        torch.testing.assert_close(terms[units].detach(), by_hand[units], rtol=1e-4, atol=1e-3)
    assert not torch.isclose(by_hand["posterior"], by_hand["batch"], rtol=0.1)


def test_the_appearance_reader_refuses_batch_units(tiny_model_kwargs):
    with pytest.raises(ValueError, match="cycle_units=batch"):
        SDCD(**tiny_model_kwargs, cycle_weight=1.0, cycle_reader="appearance", augmentation_weight=1.0,
             cycle_units="batch")
    with pytest.raises(ValueError, match="cycle_units"):
        SDCD(**tiny_model_kwargs, cycle_units="probe")


def test_swaps_drawn_from_the_mean_match_the_term_by_hand(tiny_model_kwargs):
    """cycle_code=mean: e_AB = h(λ_B, μ_A) with λ_B = h⁻¹(e_B, μ_B), no sample of f drawn."""
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs, cycle_reader="invariant", cycle_code="mean").eval()
    e = 3 * torch.randn(6, 4, 16)
    term = swap_cycle_term(model, e)
    with torch.no_grad():
        _, mu_a, var_a = model.static_posterior(e)
        mu_ab, _ = product_of_gaussians(*model.static_encoder(swap_by_hand(model, e, mu_a)), 1e-6)
    torch.testing.assert_close(term.detach(), 0.5 * ((mu_ab - mu_a) ** 2 / var_a).sum(1).mean(), rtol=1e-4, atol=1e-3)
    torch.manual_seed(5)
    torch.testing.assert_close(swap_cycle_term(model, e), term)  # nothing drawn
    with pytest.raises(ValueError, match="cycle_code"):
        SDCD(**tiny_model_kwargs, cycle_code="median")


def test_an_anchored_invariant_reader_learns_only_from_the_reading_of_the_swap(tiny_model_kwargs):
    """cycle_anchor: the same value; the gradient is that of the swap's reading alone (the target detached)."""
    e = 3 * torch.randn(6, 4, 16)
    grads, values = {}, {}
    for anchor in (False, True):
        torch.manual_seed(0)
        model = SDCD(**tiny_model_kwargs, cycle_reader="invariant", cycle_code="mean", cycle_anchor=anchor).eval()
        term = swap_cycle_term(model, e)
        term.backward()
        values[anchor] = term.detach()
        grads[anchor] = torch.cat([p.grad.flatten() for p in model.static_encoder.parameters()])
    torch.testing.assert_close(values[True], values[False])
    assert not torch.allclose(grads[True], grads[False])
    model.zero_grad()  # by hand: the gradient of ½ Σ (μ(e_AB) − sg(μ_A))² / σ²_A
    with torch.no_grad():
        _, mu_a, var_a = model.static_posterior(e)
        e_ab = swap_by_hand(model, e, mu_a)
    mu_ab, _ = product_of_gaussians(*model.static_encoder(e_ab), 1e-6)
    (0.5 * ((mu_ab - mu_a) ** 2 / var_a).sum(1).mean()).backward()
    by_hand = torch.cat([p.grad.flatten() for p in model.static_encoder.parameters()])
    torch.testing.assert_close(grads[True], by_hand, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="cycle_anchor=true .* needs model.cycle_reader=invariant"):
        SDCD(**tiny_model_kwargs, cycle_reader="fixed", cycle_anchor=True)
