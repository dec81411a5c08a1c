"""sdcd.augmentation: the colour-augmentation departure."""

import pytest
import torch

from sdcd.augmentation import augmentation_term, permute_colours


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
