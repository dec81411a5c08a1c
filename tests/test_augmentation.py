"""sdcd.augmentation: the colour-augmentation departure."""

import pytest
import torch

from sdcd.augmentation import (
    augment_colours,
    augmentation_term,
    augmented_features,
    colour_augmentation,
    feature_variance,
    permute_and_gamma,
    permute_colours,
    random_gains,
    remap_palette,
    swap_term,
    time_order,
)
from sdcd.model import SDCD


def test_permute_colours_changes_colours_never_shapes_or_time():
    x = torch.rand(64, 4, 3, 8, 8)
    y = permute_colours(x)
    for b in range(len(x)):
        # every frame of a sequence gets the same permutation, and it is never the identity
        perm = [next(c for c in range(3) if torch.equal(y[b, :, k], x[b, :, c])) for k in range(3)]
        assert sorted(perm) == [0, 1, 2] and perm != [0, 1, 2]


def test_infonce_term_is_low_when_copies_match_and_high_when_shuffled():
    lam = torch.randn(16, 4, 16)
    matched = augmentation_term(lam, lam, "infonce", temperature=0.1)
    mismatched = augmentation_term(lam, lam.roll(1, 0), "infonce", temperature=0.1)
    assert matched < 0.01 and mismatched > 5  # log(16) ≈ 2.8 is chance; a wrong match is far worse
    mse = augmentation_term(lam, lam + 1, "mse", temperature=0.1)
    assert mse.item() == pytest.approx(4 * 16)  # (1)² summed over 4 frames × 16 dims


def test_permuting_needs_three_channels():
    with pytest.raises(ValueError, match="needs 3 channels, got 1"):
        permute_colours(torch.rand(2, 4, 1, 8, 8))


def test_random_gains_scale_each_channel_of_a_sequence_by_one_gain_and_keep_black_black():
    x = torch.rand(8, 4, 3, 8, 8)
    x[:, :, :, 0, 0] = 0
    y = random_gains(x, torch.Generator().manual_seed(0))
    gain = y / x
    assert torch.all(y[:, :, :, 0, 0] == 0)
    g = gain[:, :, :, 1:, 1:].flatten(3)
    torch.testing.assert_close(g.amin(3), g.amax(3))  # one gain per channel ...
    torch.testing.assert_close(g[:, :1].expand_as(g), g)  # ... and per sequence
    assert g.min() >= 0.25 and g.max() <= 1.0


def test_remap_palette_gives_each_colour_of_a_sequence_one_new_colour_keeps_shapes_and_black():
    g = torch.Generator().manual_seed(0)
    palette = torch.tensor([[0, 0, 0], [255, 0, 0], [10, 200, 30], [128, 128, 128]]) / 255.0  # black first
    which = torch.randint(0, 4, (3, 5, 6, 6), generator=g)  # (B, T, H, W): which colour each pixel has
    which[:, :, 0, :4] = torch.arange(4)  # every colour in every frame
    x = palette[which].permute(0, 1, 4, 2, 3)  # (B, T, C, H, W)
    y = remap_palette(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    new = {}
    for b in range(3):
        for k in range(4):
            pixels = y[b].permute(0, 2, 3, 1)[which[b] == k]  # (n, C): all pixels of colour k, all frames
            assert torch.all(pixels == pixels[0])  # one new colour per old colour and sequence
            new[b, k] = pixels[0]
        assert torch.all(new[b, 0] == 0)  # black stays black
        assert len({tuple(new[b, k].tolist()) for k in range(1, 4)}) == 3  # distinct colours stay distinct
    assert not torch.equal(new[0, 1], new[1, 1])  # each sequence gets its own palette
    assert torch.equal(augment_colours(x, "palette", torch.Generator().manual_seed(1)), y)


def test_swap_term_is_small_for_identical_copies_large_for_strangers_and_trains_f_and_h(tiny_model_kwargs):
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs)
    e = 3 * torch.randn(8, 4, 16)
    same = swap_term(model, e, e)
    strangers = swap_term(model, e, e.roll(1, 0))
    assert 0 <= same < 0.2 * strangers
    strangers.backward()
    assert all(p.grad is not None for p in model.static_encoder.parameters())
    assert any(p.grad is not None for p in model.flow.parameters())


def test_normalised_swap_term_is_divided_by_the_batch_feature_variance_and_logged(tiny_model_kwargs):
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs, augmentation_weight=1.0, augmentation_loss="swap",
                 augmentation_normalise=True).eval()
    e = 3 * torch.randn(8, 4, 16)
    e_aug = e + 0.5 * torch.randn_like(e)
    variance = torch.stack([e[:, :, d].flatten().var() for d in range(16)]).mean()  # over all B·T frames
    torch.testing.assert_close(feature_variance(e), variance)
    torch.manual_seed(1)
    got = colour_augmentation(model, e, e_aug)
    torch.manual_seed(1)  # the same draws of f
    torch.testing.assert_close(got, swap_term(model, e, e_aug) / variance)
    # 10× larger features: the raw term grows about 100×, the normalised one stays in the same units
    assert feature_variance(10 * e) / feature_variance(e) == pytest.approx(100, rel=1e-4)
    model.train()
    terms = model.loss_terms(torch.rand(8, 4, 3, 32, 32), shuffle=True)
    assert terms["feature_variance"] > 0 and torch.isfinite(terms["augmentation"])
    # logged with the raw term too (a raw weight is relative to it), and not without the term
    assert "feature_variance" in SDCD(**tiny_model_kwargs, augmentation_weight=1.0,
                                      augmentation_loss="swap").train().loss_terms(
        torch.rand(8, 4, 3, 32, 32), shuffle=True)
    assert "feature_variance" not in SDCD(**tiny_model_kwargs).train().loss_terms(
        torch.rand(8, 4, 3, 32, 32), shuffle=True)
    with pytest.raises(ValueError, match="model.augmentation_normalise=true scales the swap form only"):
        SDCD(**tiny_model_kwargs, augmentation_weight=1.0, augmentation_loss="mse", augmentation_normalise=True)


def test_time_order_reverses_or_rolls_each_row_and_never_keeps_the_order():
    assert time_order(3, 5, "same", torch.device("cpu")) is None
    assert (time_order(2, 4, "reverse", torch.device("cpu")) == torch.tensor([[3, 2, 1, 0]] * 2)).all()
    torch.manual_seed(0)
    rolled = time_order(256, 8, "roll", torch.device("cpu"))
    shifts = (rolled[:, 0]).tolist()
    assert set(shifts) == set(range(1, 8))  # every non-zero shift occurs, zero never
    assert (rolled == (torch.arange(8)[None] + rolled[:, :1]) % 8).all()


def test_a_re_ordered_copy_has_the_same_static_code_and_the_targets_follow_its_order(tiny_model_kwargs):
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs, augmentation_weight=1.0, augmentation_loss="swap",
                 augmentation_time="reverse").eval()
    e, e_aug = 3 * torch.randn(4, 4, 16), 3 * torch.randn(4, 4, 16)
    _, mu, var = model.static_posterior(e)
    _, mu_r, var_r = model.static_posterior(e.flip(1))
    torch.testing.assert_close((mu_r, var_r), (mu, var))  # why the copy needs no re-encoding
    torch.manual_seed(1)
    got = swap_term(model, e, e_aug)
    torch.manual_seed(1)  # the same draws of f, in the same order
    a, b = model.codes_of_features(e), model.codes_of_features(e_aug.flip(1))
    err_b = (model.flow.generate(a.lam, b.f[:, None].expand(-1, 4, -1)) - e_aug) ** 2
    err_a = (model.flow.generate(b.lam, a.f[:, None].expand(-1, 4, -1)) - e.flip(1)) ** 2
    torch.testing.assert_close(got, 0.5 * (err_a.sum((1, 2)) + err_b.sum((1, 2))).mean())
    with pytest.raises(ValueError, match="model.augmentation_time=roll re-orders the copy for the swap form only"):
        SDCD(**tiny_model_kwargs, augmentation_weight=1.0, augmentation_loss="mse", augmentation_time="roll")


def test_permute_and_gamma_moves_greys_keeps_black_and_white_and_is_one_map_per_sequence():
    grey = torch.tensor([0.0, 0.5, 1.0])  # black, mid-grey, white in every channel
    x = grey[None, None, None, :, None].expand(4, 3, 3, 3, 2).clone()  # (B, T, C, H=3 greys, W)
    y = permute_and_gamma(x, torch.Generator().manual_seed(0))
    assert torch.equal(y[:, :, :, 0], x[:, :, :, 0]) and torch.equal(y[:, :, :, 2], x[:, :, :, 2])
    mid = y[:, :, :, 1, 0]  # (B, T, C): the grey's new value per channel
    assert (mid - 0.5).abs().amax() > 0.05  # a permutation alone would leave the grey where it was
    torch.testing.assert_close(mid, mid[:, :1].expand_as(mid))  # the same map in every frame
    assert ((mid >= 0.5**3 - 1e-6) & (mid <= 0.5 ** (1 / 3) + 1e-6)).all()  # γ within [1/3, 3]
    assert torch.equal(augment_colours(x, "gamma", torch.Generator().manual_seed(0)), y)


def test_gamma_spread_sets_the_range_of_powers_and_a_bad_one_is_refused():
    x = torch.full((64, 2, 3, 1, 1), 0.5)
    mid = permute_and_gamma(x, torch.Generator().manual_seed(0), spread=1.5)
    assert ((mid >= 0.5**1.5 - 1e-6) & (mid <= 0.5 ** (1 / 1.5) + 1e-6)).all()
    assert mid.std() > 0.01  # powers differ between sequences and channels
    model = SDCD(n_frames=2, frame_size=8, base_channels=4, latent_dim=8, static_hidden=8, flow_layers=1,
                 flow_hidden=8, prior_layers=1, prior_hidden=8, lstm_hidden=8, augmentation_weight=1.0,
                 augmentation_loss="swap", augmentation_colours="gamma", augmentation_gamma_spread=1.5)
    torch.testing.assert_close(model.colour_copy(x, torch.Generator().manual_seed(0)), mid)
    with pytest.raises(ValueError, match="augmentation_gamma_spread=0.5 must be ≥ 1"):
        SDCD(augmentation_gamma_spread=0.5)


def test_fresh_copies_are_redrawn_every_step_with_their_rows_noise_and_fixed_ones_come_from_the_cache(
        tiny_model_kwargs):
    model = SDCD(**{**tiny_model_kwargs, "channels": 3}, augmentation_weight=1.0, augmentation_loss="swap",
                 augmentation_colours="gamma", augmentation_copies="fresh").eval()
    torch.manual_seed(0)
    x = torch.rand(4, 4, 3, 32, 32)
    with torch.no_grad():
        mean = model.frame_features(x, noise=False)
    e = mean + torch.randn_like(mean)  # the batch's noisy features, as stage 2 makes them from its cache
    torch.manual_seed(1)
    first = augmented_features(model, x, e, (mean, None))
    second = augmented_features(model, x, e, (mean, None))
    assert not torch.allclose(first, second)  # a new colour change at each call
    torch.manual_seed(1)  # the same draw of the copy's colours
    with torch.no_grad():
        expected = model.frame_features(model.colour_copy(x), noise=False) + (e - mean)
    torch.testing.assert_close(first, expected)  # the copy carries its row's feature noise
    cached_copy = torch.randn_like(mean)
    torch.testing.assert_close(augmented_features(model, x, e, (mean, cached_copy)), cached_copy + (e - mean))
    with pytest.raises(ValueError, match="model.augmentation_copies must be one of fixed, fresh"):
        SDCD(augmentation_copies="new")
