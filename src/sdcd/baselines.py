"""Baselines on the sequential-disentangler interface, re-implemented from their papers' descriptions
(no code of theirs is used; none of their repositories has a licence).

Both share SDCD's frame encoder/decoder (`sdcd.autoencoder`) at the same widths, a standard-normal
static prior p(f) = N(0, I), the LSTM dynamic prior p(z_t | z_<t) (`sdcd.dynamic.LSTMPrior`, an
autoregressive Gaussian), a unit-variance Gaussian likelihood (the per-sequence sum of squared errors,
as SDCD), and the ELBO with closed-form KL terms; they differ only in how the codes are inferred:

* **DSVAE** (Li & Mandt, "Disentangled Sequential Autoencoder", ICML 2018), the "full" posterior:
  q(f | x_1:T) from a bidirectional LSTM over the frame features (its last forward and first backward
  states), q(z_t | x_1:T, f) from a bidirectional LSTM over [feature_t, f]; decoder p(x_t | f, z_t).
* **DBSE** (Berman et al., "Sequential Disentanglement by Extracting Static Information From A Single
  Sequence Element", ICML 2024): q(f | x_1) from the *first frame's* features only; q(z_t | x_1:t) from an
  LSTM over the features minus the first frame's (h_t − h_1); the ELBO plus a first-frame term. Our
  reading of that term: the static code alone, with a zero dynamic code, must draw the first frame
  (decode(f, 0) ≈ x_1); the repository's weights (5 · sequence reconstruction, 1 · first frame) become
  `recon_weight=1`, `first_frame_weight=0.2` on sums of squared errors.

Which hyperparameters are the papers' and which are ours: each class's docstring. No mutual-information
terms or augmentation (C-DSVAE's additions) are implemented.

**Two-stage** (`stage=disentangle`, ours, for comparing with SDCD's Sprites CPU recipe): the frame
autoencoder is SDCD's stage-1 one (`model.autoencoder_checkpoint`), loaded and frozen; its noisy
features e_t = mean_t + feature_noise·ε are the data, as for SDCD's stage 2. The baseline infers its
codes from e_1:T as above and reconstructs e_t with a feature decoder p(e_t | f, z_t) = N(MLP(f, z_t), I)
(the "sse" term is then in feature space); frames are drawn by the frozen frame decoder from the decoded
features. Only the inference nets, the feature decoder and the priors train, exactly the parts SDCD's
stage 2 trains; with `feature_cache` the feature means of the training split are computed once.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn

from sdcd.autoencoder import FrameDecoder, FrameEncoder
from sdcd.dynamic import LSTMPrior
from sdcd.interface import Codes, SequentialModule, check_hparams
from sdcd.stages import FeatureCache, check_stage_args, freeze_autoencoder, load_autoencoder_for_fit

BASELINE_TERMS = ("sse", "kl_static", "kl_dynamic")
BASELINE_STAGES = ("joint", "disentangle")


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, e^logvar_q) ‖ N(mu_p, e^logvar_p)), diagonal, summed over the last dimension."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def _sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """A reparameterised draw from N(mu, e^logvar)."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


class GaussianHead(nn.Module):
    """(..., in) → mean, logvar: (..., out)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Linear(in_dim, 2 * out_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)  # keeps exp() finite in bf16 and early training


class SequentialVAE(SequentialModule):
    """What DSVAE and DBSE share: frame autoencoder, priors, ELBO, the interface. A subclass builds its
    inference nets in `__init__` and implements `posteriors(h) -> (mu_f, logvar_f, mu_z, logvar_z)`."""

    guarded_terms = BASELINE_TERMS

    def _build_shared(self) -> None:
        hp = self.hparams
        code_dim = hp.static_dim + hp.dynamic_dim
        self.encoder = FrameEncoder(hp.frame_size, hp.channels, hp.base_channels, hp.feature_dim)
        if hp.stage == "disentangle":  # SDCD's frame autoencoder (loaded in `setup`, frozen) + a feature decoder
            self.mean_net = nn.Linear(hp.feature_dim, hp.feature_dim)
            self.decoder = FrameDecoder(hp.frame_size, hp.channels, hp.base_channels, hp.feature_dim)
            self.feature_decoder = nn.Sequential(nn.Linear(code_dim, hp.rnn_hidden), nn.SiLU(),
                                                 nn.Linear(hp.rnn_hidden, hp.rnn_hidden), nn.SiLU(),
                                                 nn.Linear(hp.rnn_hidden, hp.feature_dim))
            freeze_autoencoder(self)
        else:
            self.decoder = FrameDecoder(hp.frame_size, hp.channels, hp.base_channels, code_dim)
        self.dynamic_prior = LSTMPrior(hp.dynamic_dim, hp.prior_hidden, 1)
        self.feature_cache = FeatureCache()  # stage 2's frozen feature means (not saved)

    @property
    def two_stage(self) -> bool:
        return self.hparams.stage == "disentangle"

    def frame_features(self, x: torch.Tensor, noise: bool = True) -> torch.Tensor:
        """x: (B, T, C, H, W) → h: (B, T, feature_dim); in stage 2 the frozen features with their noise."""
        b = x.shape[0]
        h = self.encoder(rearrange(x, "b t c h w -> (b t) c h w"))
        if self.two_stage:
            h = self.mean_net(h)
            if noise:
                h = h + self.hparams.feature_noise * torch.randn_like(h)
        return rearrange(h, "(b t) d -> b t d", b=b)

    def posteriors(self, h: torch.Tensor):
        raise NotImplementedError

    def reconstruct(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """f: (B, D_f), z: (B, T, D_z) → the likelihood's mean: frames (B, T, C, H, W), or in stage 2
        features (B, T, feature_dim)."""
        b, t = z.shape[:2]
        inp = torch.cat([repeat(f, "b d -> b t d", t=t), z], dim=-1)
        if self.two_stage:
            return self.feature_decoder(inp)
        return rearrange(self.decoder(rearrange(inp, "b t d -> (b t) d")), "(b t) c h w -> b t c h w", b=b)

    def decode(self, f: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """f: (B, D_f), z = lam: (B, T, D_z) → frames (B, T, C, H, W)."""
        out = self.reconstruct(f, lam)
        if not self.two_stage:
            return out
        b = out.shape[0]
        return rearrange(self.decoder(rearrange(out.to(f.dtype), "b t d -> (b t) d")), "(b t) c h w -> b t c h w",
                         b=b)

    def encode(self, x: torch.Tensor, mean: bool = False) -> Codes:
        h = self.frame_features(x)
        mu_f, logvar_f, mu_z, logvar_z = self.posteriors(h)
        f = mu_f if mean else _sample(mu_f, logvar_f)
        z = mu_z if mean else _sample(mu_z, logvar_z)
        return Codes(f=f, f_mean=mu_f, lam=z, features=h)

    def sample_static(self, n: int) -> torch.Tensor:
        """n static codes from p(f) = N(0, I)."""
        return torch.randn(n, self.hparams.static_dim, device=self.device)

    def sample_dynamics(self, n: int, n_frames: int | None = None, mean: bool = False) -> torch.Tensor:
        return self.dynamic_prior.sample(n, n_frames or self.hparams.n_frames, self.device, mean=mean)

    def elbo_terms(self, x: torch.Tensor, h: torch.Tensor | None = None):
        """The ELBO's terms for x: (B, T, C, H, W) (each summed over a sequence, batch-averaged), the
        sampled codes f: (B, D_f), z: (B, T, D_z), and what was reconstructed (x, or in stage 2 the
        features h: (B, T, feature_dim), given or computed from x)."""
        if h is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.two_stage):
                h = self.frame_features(x)
        target = h if self.two_stage else x
        mu_f, logvar_f, mu_z, logvar_z = self.posteriors(h)
        f, z = _sample(mu_f, logvar_f), _sample(mu_z, logvar_z)
        sse = ((self.reconstruct(f, z).float() - target.float()) ** 2).flatten(1).sum(1).mean()
        kl_static = gaussian_kl(mu_f, logvar_f, torch.zeros_like(mu_f), torch.zeros_like(logvar_f)).mean()
        shift, log_scale = self.dynamic_prior.params(z)  # p(z_t | z_<t), teacher forced on the sample
        kl_dynamic = gaussian_kl(mu_z, logvar_z, shift, 2 * log_scale).sum(1).mean()
        return {"sse": sse, "kl_static": kl_static, "kl_dynamic": kl_dynamic}, f, z, target

    def loss_terms(self, x: torch.Tensor, shuffle: bool = False,
                   h: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hp = self.hparams  # `shuffle` is SDCD's constraint: these models have none
        terms, *_ = self.elbo_terms(x, h)
        terms["loss"] = terms["sse"] + hp.kl_static_weight * terms["kl_static"] + hp.kl_dynamic_weight * terms[
            "kl_dynamic"]
        return terms

    def training_loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        hp = self.hparams
        if self.two_stage and hp.feature_cache and "index" in batch:  # the cached means plus fresh noise
            mean, _ = self.feature_cache.get(self, self.trainer.datamodule, batch.get("split", "train"),
                                             batch["index"], None)
            return self.loss_terms(batch["x"], h=mean + hp.feature_noise * torch.randn_like(mean))
        return self.loss_terms(batch["x"])

    def setup(self, stage: str) -> None:
        load_autoencoder_for_fit(self, stage)
        super().setup(stage)


_SHARED_DOC = """
        n_frames: Frames per sequence T.
        frame_size: Frame height = width, a power of two.
        channels: Colour channels of a frame.
        base_channels: Width of the first encoder conv (SDCD's frame autoencoder; ours: SDCD's width).
        feature_dim: Size of a frame feature h_t (the encoder's output).
        static_dim: Size of the static code f.
        dynamic_dim: Size of a dynamic code z_t.
        rnn_hidden: Hidden size of the inference LSTMs.
        prior_hidden: Hidden size of the LSTM dynamic prior.
        kl_static_weight: Weight of KL(q(f|·) ‖ N(0, I)) (1 = the ELBO).
        kl_dynamic_weight: Weight of Σ_t KL(q(z_t|·) ‖ p(z_t|z_<t)) (1 = the ELBO).
        lr: Adam learning rate.
        grad_clip_norm: Gradient-norm clipping; 0 disables it.
        nonfinite_patience: Stop after K consecutive non-finite steps (sdcd.guard); 0 only skips them.
        stage: "joint" (the paper's), or "disentangle" (ours): on the frozen features of SDCD's stage-1
            autoencoder (module docstring); feature_dim and base_channels must then match it.
        autoencoder_checkpoint: For stage "disentangle": the SDCD checkpoint whose frame autoencoder
            is loaded and frozen when fit starts from scratch.
        feature_cache: For stage "disentangle": compute the training split's feature means once.
        feature_noise: For stage "disentangle": std of the unit noise on the features (SDCD's, 1.0)."""


def _check(values: dict) -> None:
    check_hparams(choices={"stage": BASELINE_STAGES}, at_least_two=("n_frames",),
                  positive=("feature_dim", "static_dim", "dynamic_dim", "rnn_hidden", "prior_hidden", "lr"),
                  non_negative=("kl_static_weight", "kl_dynamic_weight", "grad_clip_norm", "feature_noise"), **values)
    check_stage_args(values["stage"], values["autoencoder_checkpoint"])


class DSVAE(SequentialVAE):
    __doc__ = """DSVAE (Li & Mandt 2018), "full" posterior q(f|x_1:T) q(z_1:T|x_1:T, f).

    The paper's: the factorisation, the priors (N(0, I) for f, an LSTM prior for z), bidirectional
    LSTMs for inference, the plain ELBO (weights 1). Ours: the frame autoencoder (SDCD's), the sizes,
    the Gaussian likelihood (sum of squared errors) and the optimiser.

    Args:""" + _SHARED_DOC + "\n    "

    def __init__(
        self,
        n_frames: int = 8, frame_size: int = 64, channels: int = 3, base_channels: int = 64,
        feature_dim: int = 128, static_dim: int = 128, dynamic_dim: int = 32, rnn_hidden: int = 256,
        prior_hidden: int = 256, kl_static_weight: float = 1.0, kl_dynamic_weight: float = 1.0,
        lr: float = 1e-3, grad_clip_norm: float = 0.5, nonfinite_patience: int = 10,
        stage: str = "joint", autoencoder_checkpoint: str | None = None, feature_cache: bool = True,
        feature_noise: float = 1.0,
    ):
        super().__init__()
        _check(dict(locals()))
        self.save_hyperparameters()
        self._build_shared()
        self.static_rnn = nn.LSTM(feature_dim, rnn_hidden, batch_first=True, bidirectional=True)
        self.static_head = GaussianHead(2 * rnn_hidden, static_dim)
        self.dynamic_rnn = nn.LSTM(feature_dim + static_dim, rnn_hidden, batch_first=True, bidirectional=True)
        self.dynamic_head = GaussianHead(2 * rnn_hidden, dynamic_dim)

    def posteriors(self, h: torch.Tensor):
        """h: (B, T, feature_dim) → q(f): (B, D_f) ×2 and q(z_t): (B, T, D_z) ×2."""
        out, _ = self.static_rnn(h)  # (B, T, 2·H)
        half = out.shape[-1] // 2
        summary = torch.cat([out[:, -1, :half], out[:, 0, half:]], dim=-1)  # forward at T, backward at 1
        mu_f, logvar_f = self.static_head(summary)
        # q(z | x, f) conditions on the posterior mean of f (a sample would add noise for no gain)
        out, _ = self.dynamic_rnn(torch.cat([h, repeat(mu_f, "b d -> b t d", t=h.shape[1])], dim=-1))
        mu_z, logvar_z = self.dynamic_head(out)
        return mu_f, logvar_f, mu_z, logvar_z


class DBSE(SequentialVAE):
    __doc__ = """DBSE (Berman et al. 2024): the static code from the first frame, the dynamics from the
    features minus the first frame's.

    The paper's: q(f | x_1), z from h_t − h_1, the ELBO with a first-frame reconstruction term, no
    mutual-information terms and no augmentation. Ours: the frame autoencoder (SDCD's), the sizes, the
    Gaussian likelihood, the form of the first-frame term (decode(f, 0) ≈ x_1; module docstring) and the
    optimiser.

    Args:""" + _SHARED_DOC + """
        recon_weight: Weight of the sequence reconstruction (the repository's 5 : 1 ratio → 1).
        first_frame_weight: Weight of the first-frame term (→ 0.2).
    """

    guarded_terms = (*BASELINE_TERMS, "sse_first")

    def __init__(
        self,
        n_frames: int = 8, frame_size: int = 64, channels: int = 3, base_channels: int = 64,
        feature_dim: int = 128, static_dim: int = 128, dynamic_dim: int = 32, rnn_hidden: int = 256,
        prior_hidden: int = 256, kl_static_weight: float = 1.0, kl_dynamic_weight: float = 1.0,
        lr: float = 1e-3, grad_clip_norm: float = 0.5, nonfinite_patience: int = 10,
        stage: str = "joint", autoencoder_checkpoint: str | None = None, feature_cache: bool = True,
        feature_noise: float = 1.0, recon_weight: float = 1.0, first_frame_weight: float = 0.2,
    ):
        super().__init__()
        _check(dict(locals()))
        check_hparams(non_negative=("recon_weight", "first_frame_weight"), **locals())
        self.save_hyperparameters()
        self._build_shared()
        self.static_head = nn.Sequential(nn.Linear(feature_dim, rnn_hidden), nn.SiLU(),
                                         GaussianHead(rnn_hidden, static_dim))
        self.dynamic_rnn = nn.LSTM(feature_dim, rnn_hidden, batch_first=True)
        self.dynamic_head = GaussianHead(rnn_hidden, dynamic_dim)

    def posteriors(self, h: torch.Tensor):
        mu_f, logvar_f = self.static_head(h[:, 0])  # the first frame only
        out, _ = self.dynamic_rnn(h - h[:, :1])  # what changed since the first frame
        mu_z, logvar_z = self.dynamic_head(out)
        return mu_f, logvar_f, mu_z, logvar_z

    def loss_terms(self, x: torch.Tensor, shuffle: bool = False,
                   h: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hp = self.hparams
        terms, f, z, target = self.elbo_terms(x, h)
        first = self.reconstruct(f, torch.zeros_like(z[:, :1]))[:, 0]  # the static code alone draws frame 1
        terms["sse_first"] = ((first.float() - target[:, 0].float()) ** 2).flatten(1).sum(1).mean()
        terms["loss"] = (hp.recon_weight * terms["sse"] + hp.first_frame_weight * terms["sse_first"]
                         + hp.kl_static_weight * terms["kl_static"] + hp.kl_dynamic_weight * terms["kl_dynamic"])
        return terms
