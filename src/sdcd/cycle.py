"""The swap-cycle term: a named departure from the paper (off by default, `model.cycle_weight`).

The swap test of the protocol decodes h(λ_B, f_A) — A's static code with another sequence's dynamics —
and asks that it show A's appearance. Nothing in the paper's objective ever trains the flow on such a
combination: the likelihood only sees h⁻¹(x, f(x)) of real sequences, and the colour-swap term
(sdcd.augmentation) only pairs a sequence with a colour-changed copy of itself, in the same pose. So
whether a fine detail held by f_A (a close shade of skin or pants) is drawn correctly under someone
else's poses is left to how the flow generalises.

The cycle closes that loop without labels: within a batch, each sequence's static code is combined with
the dynamics of the next row, e_AB = h(λ_B, f_A), and the static encoder, read as a fixed judge of
appearance, must find f_A again in e_AB:

    cycle = ½ Σ_d (μ_d(e_AB) − f_A,d)² / σ²_A,d,        batch-averaged,

with μ(e_AB) the aggregated static posterior mean of the swapped features, and σ²_A the posterior
variance of q(f | e_A) (detached): a mismatch of one posterior standard deviation costs ½. The flow and
the static code f_A learn from it. `cycle_reader` says whether the static encoder also learns from it
*as the reader*:

* "fixed": its weights are detached there, so it cannot learn to excuse the flow. But then whatever f_A
  holds about the action (a posterior mean can read it although the flow ignores it) is asked back
  from e_AB too, and the flow is pushed to draw A's action: measured, the action moves back to f.
* "trained": the reader learns as well, so it can instead learn to ignore what the swap cannot carry
  over (B's action, drawn by λ_B) — f then reads only what f controls. Measured, the action stays in λ,
  but the reader also learns to excuse the flow on the appearance, which then swaps worse.

`cycle_form="pair"` asks less: only the *sum* of the two readings of a pair's swaps, h(λ_B, f_A) and
h(λ_A, f_B), must equal f_A + f_B (in units of the sum's posterior variance). Whichever code holds a
factor, the pair's two swaps show both sequences' values of it once each, so the sum does not care where
the action (or the appearance) lives — it cannot pull the action into f through a reader that reads it —
but a shade drawn wrong in one swap is not cancelled by the other.

Its measured effect on Sprites: README, "Sprites on a CPU", and docs/sprites.md.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch.func import functional_call

from sdcd.static import product_of_gaussians

CYCLE_READERS = ("fixed", "trained")
CYCLE_FORMS = ("each", "pair")


def read_static(model, e: torch.Tensor) -> torch.Tensor:
    """The static posterior mean (B, D) of features e: (B, T, D), read as `cycle_reader` says."""
    if model.hparams.cycle_reader == "fixed":
        weights = {name: p.detach() for name, p in model.static_encoder.named_parameters()}
        mu_t, logvar_t = functional_call(model.static_encoder, weights, (e,))
    else:
        mu_t, logvar_t = model.static_encoder(e)
    return product_of_gaussians(mu_t, logvar_t, model.hparams.variance_floor)[0].float()


def swap_cycle_term(model, e: torch.Tensor) -> torch.Tensor:
    """The cycle term for (detached, noisy) frame features e: (B, T, D) of a training batch (B ≥ 2)."""
    hp = model.hparams
    t = e.shape[1]
    _, mu_a, var_a = model.static_posterior(e)  # (B, D) each
    f_a = mu_a + var_a.sqrt() * torch.randn_like(mu_a)  # a sample of q(f | e), as the swap test uses
    lam, _ = model.flow.inverse_and_log_prob(e, repeat(f_a, "b d -> b t d", t=t))  # (B, T, D)
    e_ab = model.flow.generate(lam.roll(1, dims=0), repeat(f_a, "b d -> b t d", t=t))  # row i: λ of row i−1
    target, var = f_a.detach().float(), var_a.detach().float()
    read = read_static(model, e_ab)
    if hp.cycle_form == "pair":  # the other swap of the same pair: f of row i−1 with λ of row i
        f_b = f_a.roll(1, dims=0)
        e_ba = model.flow.generate(lam, repeat(f_b, "b d -> b t d", t=t))
        read = read + read_static(model, e_ba)
        target, var = target + target.roll(1, dims=0), var + var.roll(1, dims=0)
    return 0.5 * ((read - target) ** 2 / var).sum(1).mean()
