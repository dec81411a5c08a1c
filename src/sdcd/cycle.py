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
* "appearance": the fixed reader, but only the directions of f that hold the appearance are compared.
  Those are found without labels, from the colour augmentation (sdcd.augmentation): a sequence and its
  colour-changed copy differ in appearance only, so the moves δ = μ(e_aug) − μ(e) of f's posterior mean
  span where f keeps colours. A running covariance of δ (whitened by the posterior std, one update per
  step, `cycle_subspace_momentum`) gives the subspace: its leading eigenvectors up to a fraction
  `cycle_subspace_mass` of its trace. The residual is projected onto it before it is charged, so what f
  holds about the action (in directions a recolouring does not move) is not asked back from e_AB.
  Measured with bench/appearance_subspace.py on a model trained with the fixed reader (action in f): 8
  directions hold 99% of the moves; linear probes read skin / pants / top / hair at 98.9 / 96.4 / 100 /
  100% from them and the action at 34.0% (chance 11.1%), while the rest of f reads the action at 100%;
  on the 4,500-step run without the term, 100 / 97.9 / 100 / 100% and the action at 12.4%.
  Trained with it, though, the split gets worse, not better (README): the action goes to f's other
  directions and, added late, the appearance degrades; why, we have not found out.

* "invariant": only the reader learns. The swapped features e_AB are made without gradients (neither
  the flow nor f_A is asked anything), and the target is A's own posterior mean μ_A, not a sample: the
  static encoder must read the same static code from A and from A's appearance drawn under B's dynamics,
  in units of A's posterior standard deviation. Once the flow carries the action in λ (swap action
  ~100%), e_AB shows A's appearance doing B's action, so the pair (e_A, e_AB) is a same-appearance,
  other-action pair that no real batch holds (a Sprites sequence never changes its action); the
  consistency term (sdcd.static) only ever compares poses of one action. It is the reader that learns to
  ignore the action; since e_AB is not trained to fool it, a shade the flow draws wrong teaches the
  reader to excuse that shade, so it is meant for late training, when the swaps are right
  (`cycle_start`).

`cycle_units` says in what units a residual μ_d(e_AB) − target_d is charged. "posterior": A's posterior
standard deviation σ_A,d, as above. "batch": the spread of the target over the batch, its standard
deviation across sequences in dimension d (detached), the scale a linear probe on standardised codes
(sdcd.probes) divides each dimension by. The idea was that the probe reads the action where a dimension's
spread is small; measured on Sprites it is not so (README, "What the reader is charged for decides what it
drops"): every dimension of f holds the appearance, spread over 3–52 posterior standard deviations, and the
action's trace in each is a fraction of one. The probe reads that trace because f's mean is nearly a
function of the character and the action; against the spread it costs almost nothing, and batch units
changed nothing. Posterior units are the ones that charge it.

`cycle_code` says which static code of A the swaps are drawn from: a "sample" of q(f | e_A), as the swap
test of the protocol draws it, or the posterior "mean". With a sample, e_AB also shows the sample's
noise, one posterior standard deviation per dimension; the invariant reader, asked to read A's mean from
it, is charged about ½ per dimension for that noise whatever it does, and can lower it only by reading
the appearance less sharply. Drawn from the mean, a flow that swaps exactly and a reader that ignores
the action bring the invariant term to zero.

`cycle_anchor` (invariant reader only) holds the target μ_A fixed (detached). Without it the reader may
meet the term from both sides, moving A's own mean toward what it reads from the swap; where the flow draws
a factor partly from λ (the top, on Sprites), the cheapest way to do that is to stop reading the factor
at all, from A as from the swap. Anchored, only the reading of the swap is moved. Measured on Sprites
(README): unanchored at weight 100 the top leaves f (swap top 57%); anchored it stays (99.9%).

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
from torch import nn
from torch.func import functional_call

from sdcd.static import product_of_gaussians

CYCLE_READERS = ("fixed", "trained", "appearance", "invariant")
CYCLE_FORMS = ("each", "pair")
CYCLE_UNITS = ("posterior", "batch")
CYCLE_CODES = ("sample", "mean")


def check_cycle_args(weight: float, reader: str, augmentation_weight: float, mass: float, momentum: float,
                     units: str = "posterior", anchor: bool = False) -> None:
    """One-line errors for cycle settings that cannot work together."""
    if anchor and reader != "invariant":
        raise ValueError(f"model.cycle_anchor=true holds the invariant reader's target fixed: it needs "
                         f"model.cycle_reader=invariant, got {reader}")
    if reader == "appearance" and units != "posterior":
        raise ValueError(f"model.cycle_units={units}: the appearance reader's subspace is found in posterior "
                         f"units, so it needs model.cycle_units=posterior")
    if weight > 0 and reader == "appearance" and augmentation_weight <= 0:
        raise ValueError("model.cycle_reader=appearance finds f's appearance subspace from the colour "
                         "augmentation: it needs model.augmentation_weight > 0")
    if not 0 < mass <= 1:
        raise ValueError(f"model.cycle_subspace_mass must be in (0, 1], got {mass}")
    if not 0 <= momentum < 1:
        raise ValueError(f"model.cycle_subspace_momentum must be in [0, 1), got {momentum}")


def leading_directions(cov: torch.Tensor, mass: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cov: (D, D) → (its eigenvectors as columns by decreasing eigenvalue, (D, D); a 0/1 mask (D,) of the
    fewest leading ones that hold `mass` of the trace)."""
    ev, u = torch.linalg.eigh(cov)  # ascending
    ev, u = ev.flip(0).clamp_min(0), u.flip(1)
    before = (ev.cumsum(0) - ev) / ev.sum().clamp_min(1e-12)  # trace share of the directions before
    return u, (before < mass - 1e-6).to(u.dtype)  # (the tolerance: rounding of the cumsum)


class AppearanceSubspace(nn.Module):
    """A running covariance (D, D) of how f moves under the colour augmentation, and the projector on
    its leading directions. Buffers, so a resumed run continues it and DDP ranks share rank 0's."""

    def __init__(self, dim: int, mass: float = 0.99, momentum: float = 0.99):
        super().__init__()
        self.mass, self.momentum = mass, momentum
        self.register_buffer("cov", torch.zeros(dim, dim))
        self.register_buffer("weight", torch.zeros(()))  # the running average's total weight (bias correction)

    @torch.no_grad()
    def update(self, delta: torch.Tensor) -> None:
        """delta: (B, D) moves of f (whitened) between sequences and their colour-changed copies."""
        delta = delta.float()
        self.cov.mul_(self.momentum).add_(delta.T @ delta / len(delta), alpha=1 - self.momentum)
        self.weight.mul_(self.momentum).add_(1 - self.momentum)

    @torch.no_grad()
    def projector(self) -> torch.Tensor:
        """(D, D): the orthogonal projector on the fewest leading eigenvectors holding `mass` of the
        trace (computed with tensor ops only, so the step never waits for the host)."""
        u, keep = leading_directions(self.cov / self.weight.clamp_min(1e-12), self.mass)
        return (u * keep) @ u.T

    @torch.no_grad()
    def dims(self) -> int:
        """How many directions the projector keeps (for diagnostics; syncs)."""
        return int(round(float(torch.trace(self.projector()))))


def read_static(model, e: torch.Tensor) -> torch.Tensor:
    """The static posterior mean (B, D) of features e: (B, T, D), read as `cycle_reader` says."""
    if model.hparams.cycle_reader in ("fixed", "appearance"):
        weights = {name: p.detach() for name, p in model.static_encoder.named_parameters()}
        mu_t, logvar_t = functional_call(model.static_encoder, weights, (e,))
    else:
        mu_t, logvar_t = model.static_encoder(e)
    return product_of_gaussians(mu_t, logvar_t, model.hparams.variance_floor)[0].float()


def charge(model, read: torch.Tensor, target: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """The residual (B, D) of a reading against its target in the units `cycle_units` says: divided by
    the posterior standard deviation sqrt(var) (B, D), or by the target's standard deviation over the
    batch (1, D), detached and floored at the posterior variance floor."""
    if model.hparams.cycle_units == "batch":
        var = target.detach().var(0, keepdim=True).clamp_min(model.hparams.variance_floor)
    return (read - target) / var.sqrt()


def swap_code(model, mu_a: torch.Tensor, var_a: torch.Tensor) -> torch.Tensor:
    """The static code (B, D) the swaps are drawn from, as `cycle_code` says: a sample of q(f | e) (as the
    swap test uses) or its mean."""
    if model.hparams.cycle_code == "mean":
        return mu_a
    return mu_a + var_a.sqrt() * torch.randn_like(mu_a)


def swapped_features(model, e: torch.Tensor, f: torch.Tensor, pair: bool = False):
    """Features e: (B, T, D) and static codes f: (B, D) → e_AB = h(λ_B, f_A): (B, T, D), row i with the
    dynamics of row i−1, and with `pair` also e_BA = h(λ_A, f_B), f of row i−1 with λ of row i (else None)."""
    context = repeat(f, "b d -> b t d", t=e.shape[1])  # (B, T, D)
    lam, _ = model.flow.inverse_and_log_prob(e, context)  # (B, T, D)
    e_ab = model.flow.generate(lam.roll(1, dims=0), context)
    e_ba = model.flow.generate(lam, context.roll(1, dims=0)) if pair else None
    return e_ab, e_ba


def swap_cycle_term(model, e: torch.Tensor, e_aug: torch.Tensor | None = None) -> torch.Tensor:
    """The cycle term for (detached, noisy) frame features e: (B, T, D) of a training batch (B ≥ 2);
    the "appearance" reader also needs the colour-changed copy's features e_aug: (B, T, D)."""
    hp = model.hparams
    _, mu_a, var_a = model.static_posterior(e)  # (B, D) each
    if hp.cycle_reader == "invariant":
        return invariance_term(model, e, mu_a, var_a)
    f_a = swap_code(model, mu_a, var_a)
    e_ab, e_ba = swapped_features(model, e, f_a, pair=hp.cycle_form == "pair")
    target, var = f_a.detach().float(), var_a.detach().float()
    read = read_static(model, e_ab)
    if e_ba is not None:
        read = read + read_static(model, e_ba)
        target, var = target + target.roll(1, dims=0), var + var.roll(1, dims=0)
    residual = charge(model, read, target, var)  # (B, D), in the units of cycle_units
    if hp.cycle_reader == "appearance":
        if e_aug is None:
            raise ValueError("the appearance cycle reader needs the colour-changed copy's features e_aug")
        with torch.no_grad():
            mu_aug = model.static_posterior(e_aug)[1].float()
        with torch.autocast(residual.device.type, enabled=False):  # the subspace and projection in fp32
            model.appearance_subspace.update((mu_aug - mu_a.float()) / var_a.float().sqrt())
            residual = residual.float() @ model.appearance_subspace.projector()  # proj is symmetric
    return 0.5 * (residual ** 2).sum(1).mean()


def invariance_term(model, e: torch.Tensor, mu_a: torch.Tensor, var_a: torch.Tensor) -> torch.Tensor:
    """The "invariant" reader's term: ½ Σ_d (μ_d(e_AB) − μ_A,d)² / σ²_A,d, batch-averaged (σ as `cycle_units`
    says; μ_A detached with `cycle_anchor`), with e_AB = h(λ_B, f_A) made without gradients (cycle_form
    "each"; "pair" adds the other swap's reading, as for the other readers). mu_a, var_a: (B, D) the
    posterior of the batch's own features e: (B, T, D)."""
    with torch.no_grad():
        f_a = swap_code(model, mu_a, var_a)
        e_ab, e_ba = swapped_features(model, e, f_a, pair=model.hparams.cycle_form == "pair")
    target = mu_a.detach().float() if model.hparams.cycle_anchor else mu_a.float()
    read, var = read_static(model, e_ab), var_a.detach().float()
    if e_ba is not None:
        read = read + read_static(model, e_ba)
        target, var = target + target.roll(1, dims=0), var + var.roll(1, dims=0)
    return 0.5 * (charge(model, read, target, var) ** 2).sum(1).mean()
