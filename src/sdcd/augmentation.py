"""The colour-augmentation term: a named departure from the paper (off by default), after C-DSVAE's
"motion augmentation". Each training sequence is also encoded with its colours changed (shapes and
motion are not), and the two copies must agree on the dynamics:

* "infonce" / "mse" compare their dynamic codes λ directly (C-DSVAE's contrastive form, or the squared
  distance);
* "swap" regenerates each copy from its own static code and the *other* copy's λ through the flow,
  x' = h(λ(x), f(x')) and x = h(λ(x'), f(x)), and charges the squared error in feature space. Because
  λ = h⁻¹(x, f) is a bijection of x given f, this can only hold if f carries the colours; unlike a
  distance between λs it cannot be met by shrinking λ's colour directions. With `augmentation_time`
  "reverse" or "roll" the copy's frames are also put in another order (its time reversed, or shifted
  cyclically by a random 1..T−1 frames per row), so each sequence's static code must be drawn under
  dynamics other than its own, as in the swap test; the targets are re-ordered to match (the encoder is
  per frame and f's aggregated posterior does not depend on the frames' order, so no re-encoding).

What each does on Sprites: README, "Sprites on a CPU", and docs/sprites.md.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch.nn import functional as F

AUGMENTATION_LOSSES = ("infonce", "mse", "swap")
AUGMENTATION_COLOURS = ("permute", "gain", "palette", "gamma")
AUGMENTATION_TIMES = ("same", "reverse", "roll")
AUGMENTATION_COPIES = ("fixed", "fresh")  # stage 2's cache: one copy per sequence, or a new one per step
_PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))  # every non-identity one


def permute_colours(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (B, T, C=3, H, W) with each sequence's colour channels permuted by a random non-identity
    permutation (the same for all its frames)."""
    perms = torch.tensor(_PERMUTATIONS, device=x.device)
    if x.shape[2] != 3:
        raise ValueError(f"model.augmentation_weight > 0 permutes RGB channels: needs 3 channels, got {x.shape[2]}")
    choice = torch.randint(0, len(perms), (x.shape[0],), generator=generator,
                           device="cpu" if generator is not None else x.device)
    idx = perms[choice.to(x.device)]  # (B, 3)
    return torch.gather(x, 2, idx[:, None, :, None, None].expand(-1, x.shape[1], -1, *x.shape[3:]))


def _channel_uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, 1, C, 1, 1) uniform draws on x's device: one per sequence and channel of x: (B, T, C, H, W)
    (drawn on the CPU when a CPU generator is given)."""
    u = torch.rand(x.shape[0], 1, x.shape[2], 1, 1, generator=generator,
                   device="cpu" if generator is not None else x.device)
    return u.to(x.device)


def random_gains(x: torch.Tensor, generator: torch.Generator | None = None, low: float = 0.25) -> torch.Tensor:
    """x: (B, T, C, H, W) with each sequence's colour channels scaled by random gains in [low, 1] (one
    per channel and sequence, the same for all its frames): colours *and* brightness change, a black
    background stays black."""
    return x * (low + (1 - low) * _channel_uniform(x, generator)).to(x.dtype)


def permute_and_gamma(x: torch.Tensor, generator: torch.Generator | None = None, spread: float = 3.0) -> torch.Tensor:
    """x: (B, T, C=3, H, W) in [0, 1] with each sequence's channels permuted (`permute_colours`) and then
    raised to random powers γ, one per channel and sequence, log-uniform in [1/spread, spread].

    Why: a near-grey colour (the white top, the grey-blue skins, the near-black pants of Sprites) is
    almost unchanged by a channel permutation, so the swap form cannot push it into f. A power moves
    grey and dark shades too (0.05 → 0.22 at γ = ½) while black and white stay, as the background must."""
    x = permute_colours(x, generator)
    gamma = torch.exp((2 * _channel_uniform(x, generator) - 1) * math.log(spread))
    return x.clamp(0, 1) ** gamma.to(x.dtype)


def remap_palette(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (B, T, C, H, W) in [0, 1] with every distinct colour of each sequence (quantised to 8 bits a
    channel) replaced by its own random colour, uniform in [0, 1]^C, the same in all the sequence's
    frames; black (the Sprites background) stays black.

    Why: λ must be unchanged by the augmentation for the swap form to hold (h(·, f) is a bijection).
    A channel permutation leaves brightness unchanged, and per-channel gains leave the ratios between
    two regions' colours unchanged, so λ may keep either. Under a remapped palette nothing about any
    region's colour survives; only which pixels share a colour (the shapes) does."""
    b, t, c, h, w = x.shape
    q = (x.detach().float().clamp(0, 1) * 255).round().long()  # (B, T, C, H, W)
    key = torch.zeros(b, t, h, w, dtype=torch.long, device=x.device)
    for ch in range(c):  # one integer per colour
        key = key * 256 + q[:, :, ch]
    seq = torch.arange(b, device=x.device)[:, None, None, None]
    colours, inverse = torch.unique(key + (seq << (8 * c)), return_inverse=True)  # per-sequence palettes
    new = torch.rand(len(colours), c, generator=generator,
                     device="cpu" if generator is not None else x.device).to(x.device)
    new[(colours & ((1 << (8 * c)) - 1)) == 0] = 0.0  # black stays black
    return rearrange(new[inverse], "b t h w c -> b t c h w").to(x.dtype)


def augment_colours(x: torch.Tensor, kind: str, generator: torch.Generator | None = None,
                    gamma_spread: float = 3.0) -> torch.Tensor:
    """"permute": `permute_colours` (brightness kept); "gain": `random_gains`; "palette": `remap_palette`;
    "gamma": `permute_and_gamma` with powers in [1/gamma_spread, gamma_spread]."""
    if kind == "permute":
        return permute_colours(x, generator)
    if kind == "gamma":
        return permute_and_gamma(x, generator, gamma_spread)
    return random_gains(x, generator) if kind == "gain" else remap_palette(x, generator)


def augmentation_term(lam: torch.Tensor, lam_aug: torch.Tensor, loss: str, temperature: float) -> torch.Tensor:
    """How far the dynamic codes λ: (B, T, D) of sequences and of their colour-permuted copies disagree.

    "mse": the squared distance, summed over frames and dimensions, batch-averaged. "infonce": each
    sequence's λ must pick out its copy among the batch's (cosine similarity of the flattened codes /
    temperature, cross-entropy; C-DSVAE's contrastive form)."""
    if loss == "mse":
        return ((lam.float() - lam_aug.float()) ** 2).sum((1, 2)).mean()
    a = F.normalize(lam.flatten(1).float(), dim=1)
    b = F.normalize(lam_aug.flatten(1).float(), dim=1)
    logits = a @ b.T / temperature  # (B, B): row i should pick column i
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


def time_order(b: int, t: int, kind: str, device: torch.device) -> torch.Tensor | None:
    """(B, T) frame indices that re-order each row's copy: None for "same", the frames backwards for
    "reverse", a cyclic shift by a random 1..T−1 frames per row for "roll"."""
    if kind == "same":
        return None
    steps = torch.arange(t, device=device)
    if kind == "reverse":
        return steps.flip(0).expand(b, t)
    shift = torch.randint(1, t, (b, 1), device=device)
    return (steps[None] + shift) % t


def swap_term(model, e: torch.Tensor, e_aug: torch.Tensor) -> torch.Tensor:
    """The "swap" form for features e, e_aug: (B, T, D) of sequences and of their colour-changed copies:
    ½(‖h(λ(x'_π), f(x)) − x_π‖² + ‖h(λ(x), f(x'_π)) − x'‖²), summed over frames and dimensions,
    batch-averaged (f sampled from q(f | ·), λ given it), where ·_π re-orders the frames by
    `time_order(model.hparams.augmentation_time)` (the identity for "same")."""
    order = time_order(e.shape[0], e.shape[1], model.hparams.augmentation_time, e.device)
    target_a, e_b = e, e_aug
    if order is not None:
        index = order[:, :, None].expand_as(e)
        target_a, e_b = torch.gather(e, 1, index), torch.gather(e_aug, 1, index)
    a, b = model.codes_of_features(e), model.codes_of_features(e_b)
    t = e.shape[1]
    err_b = (model.flow.generate(a.lam, b.f[:, None].expand(-1, t, -1)) - e_aug.float()) ** 2
    err_a = (model.flow.generate(b.lam, a.f[:, None].expand(-1, t, -1)) - target_a.float()) ** 2
    return 0.5 * (err_a.sum((1, 2)) + err_b.sum((1, 2))).mean()


def augmented_features(model, x: torch.Tensor, e: torch.Tensor, cached: tuple | None) -> torch.Tensor:
    """The colour-changed copy's features e_aug: (B, T, D) for a training batch x: (B, T, C, H, W) with
    (detached) noisy features e. With stage 2's cache the copy's features get the same feature noise as
    e: its row's cached copy (`augmentation_copies=fixed`), or a copy drawn and encoded now ("fresh").
    Without the cache the copy is encoded afresh, with fresh noise."""
    if cached is not None and cached[1] is not None:
        return cached[1] + (e - cached[0])
    with torch.no_grad():  # the copy trains the disentanglement part only
        copy = model.colour_copy(x)
        if cached is None:
            return model.frame_features(copy)
        return model.frame_features(copy, noise=False).float() + (e - cached[0])


def feature_variance(e: torch.Tensor) -> torch.Tensor:
    """The mean over dimensions of the per-dimension variance of features e: (B, T, D) across the batch's
    B·T frames (a 0-d tensor; no host sync). At B·T = 512 its sampling error is about 1%."""
    return e.float().var(dim=(0, 1)).mean()


def colour_augmentation(model, e: torch.Tensor, e_aug: torch.Tensor) -> torch.Tensor:
    """The term for (detached) features e and e_aug: (B, T, D) of a batch and of its colour-changed copy.
    With `augmentation_normalise` the swap form is divided by the batch's `feature_variance(e)`: a squared
    error in feature space grows with the features' scale, which each stage-1 autoencoder sets
    differently, while the flow's likelihood and the KL do not (README, "The swap weight follows the
    features' scale"), so without it a weight tuned on one stage 1 means something else on another."""
    hp = model.hparams
    if hp.augmentation_loss == "swap":
        term = swap_term(model, e, e_aug)
        return term / feature_variance(e) if hp.augmentation_normalise else term
    return augmentation_term(model.codes_of_features(e).lam, model.codes_of_features(e_aug).lam,
                             hp.augmentation_loss, hp.augmentation_temperature)
