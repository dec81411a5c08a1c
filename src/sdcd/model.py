"""SDCD: the sequential VAE with a conditional normalizing flow (Simon, Frossard, De Vleeschouwer, ECCV 2024).

    frames x_{1:T} ─frame encoder─► features e_t = mean_t + ε  (ε ~ N(0, I), train and test)
    e_t ─(detached)─► static encoder ─► q(f_t|e_t) ─product of Gaussians─► q(f|e_{1:T}) ─► f
    e_{1:T} ─(detached)─► h⁻¹(·, f_π(t)) ─► λ_{1:T}      (π: the shuffle; identity with aggregated f)
    loss = SSE(decoder(e), x) + β·[log q(f) − log p_RealNVP(f)] + w·[−log p_h(e | f_π) − w_p·log p_LSTM(λ)]

Stop-gradients follow the official code: the static encoder and the flow see detached features, the
temporal flow layer sees a detached static code, and the LSTM prior is fitted on detached λ.
"""

from __future__ import annotations

import os

import torch
from einops import rearrange, repeat
from lightning.pytorch.utilities import rank_zero_warn

from sdcd.augmentation import (
    AUGMENTATION_COLOURS,
    AUGMENTATION_COPIES,
    AUGMENTATION_LOSSES,
    AUGMENTATION_TIMES,
    augment_colours,
    augmented_features,
    colour_augmentation,
    feature_variance,
)
from sdcd.autoencoder import FrameDecoder, FrameEncoder, lowpass_sse
from sdcd.cycle import (
    CYCLE_CODES,
    CYCLE_FORMS,
    CYCLE_READERS,
    CYCLE_UNITS,
    AppearanceSubspace,
    check_cycle_args,
    swap_cycle_term,
)
from sdcd.dynamic import ConditionalFlow, LSTMPrior
from sdcd.interface import Codes, SequentialModule, check_hparams
from sdcd.precision import compiler_problem
from sdcd.shuffle import permute_along_time
from sdcd.stages import (
    STAGES,
    FeatureCache,
    check_stage_args,
    freeze_autoencoder,
    load_autoencoder,
    load_autoencoder_for_fit,
    sample_frames,
)
from sdcd.static import StaticEncoder, StaticPrior, gaussian_log_prob, product_of_gaussians, static_consistency


class SDCD(SequentialModule):
    """Static/dynamic conditional disentanglement (the paper recipe, as the official code runs it).

    Args:
        n_frames: Frames per sequence T (16 on Moving dSprites, 8 on Sprites).
        frame_size: Frame height = width, a power of two (64 in the paper).
        channels: Colour channels of a frame.
        base_channels: Width of the first encoder conv; later ones double (64 → 64,128,256,512).
        latent_dim: D, the size of frame features, static code and dynamic codes (128).
        static_hidden: Hidden width of the static encoder MLP (128).
        static_encoder: "mlp" (the paper) or "linear": the per-frame static encoder's form.
        flow_layers: Affine coupling layers in the conditional flow h, after its temporal layer (8).
        flow_hidden: Hidden width of the flow conditioners (256).
        temporal_layer: Use h's temporal affine layer conditioned on the previous frame (the paper's h).
        prior_layers: Coupling layers of the RealNVP static prior p(f) (8).
        prior_hidden: Hidden width of the static prior's conditioners (256).
        lstm_hidden: Hidden size of the LSTM dynamic prior (256).
        lstm_layers: Layers of the LSTM dynamic prior (2).
        kl_weight: β, weight of the static KL term (0.2).
        flow_weight: Weight of the flow NLL term (20).
        dynamic_prior_weight: Weight of the LSTM prior NLL inside the flow term (0.0025; effective 0.05).
        feature_noise: Std of the unit noise added to frame features, train and test (1.0).
        variance_floor: Floor on the aggregated static variance (1e-6).
        lr: Adam learning rate (1e-3).
        lr_decay_start: Optimizer step at which a cosine decay of the learning rate starts (0).
        lr_decay_steps: Its length in steps; 0 (the paper) keeps the rate constant. Keyed on the step
            alone (sdcd.interface.scheduled_lr), so it also applies to a run resumed with --ckpt_path.
        lr_final: The rate at the end of the decay, as a fraction of lr (0.05).
        grad_clip_norm: Gradient-norm clipping, always on (0.5); 0 disables it.
        compile: torch.compile the training objective (`loss_terms`) when fit starts; eval stays eager.
        channels_last: Keep the conv weights, hence the conv activations, in channels_last memory format.
        nonfinite_patience: K: stop after K consecutive steps with a non-finite loss or gradient (each
            is skipped on the device, no host sync; sdcd.guard); 0 only skips them.
        lowpass_weight: Weight of a low-frequency reconstruction term added to the SSE, a named departure
            for the autoencoder (sdcd.autoencoder.lowpass_sse; 0 = off, the paper): the error averaged
            over lowpass_kernel² blocks, so that a region drawn in a wrong shade costs (1 + weight) times
            its SSE. The logged "sse" stays the plain SSE.
        lowpass_kernel: Block size of that term, a divisor of frame_size (4).
        augmentation_weight: Weight of the colour-augmentation term, a named departure (sdcd.augmentation;
            0 = off, the paper): λ of a sequence and of its RGB-permuted copy must agree.
        augmentation_loss: Its form: "infonce" (C-DSVAE's contrastive form), "mse" (λ against λ), or
            "swap" (each copy regenerated from the other's λ and its own f, error in feature space).
        augmentation_colours: How the copy's colours change: "permute" (RGB channels), "gain"
            (random per-channel gains, brightness too), "palette" (each distinct colour of a
            sequence replaced by a random one; black kept) or "gamma" (RGB permuted, then a random
            power per channel, so near-grey and dark shades change too; black and white kept).
        augmentation_gamma_spread: For "gamma": the powers are log-uniform in [1/spread, spread] (3).
        augmentation_temperature: Temperature of the InfoNCE form.
        augmentation_copies: With stage 2's feature cache: "fixed" caches one colour-changed copy of
            each training sequence, drawn once (what every augmentation run before this option used),
            "fresh" draws a new copy of each row at every step and encodes it with the frozen encoder
            (one encoder pass over the batch's frames per step), so the swap form sees a new colour
            change of each sequence each time. Without the cache every copy is fresh.
        augmentation_normalise: For the "swap" form: divide it by the batch features' mean per-dimension
            variance (sdcd.augmentation.feature_variance; logged as train/feature_variance whenever the
            colour term is on), so that one weight means the same on any stage-1 autoencoder. Weight w
            with it acts like w / v without, v being that variance (about 107 at unit feature noise, 13 at
            0.25 on the one-hour stage 1).
        augmentation_time: For the "swap" form: the copy's frames in the "same" order, or "reverse"d, or
            "roll"ed by a random 1..T−1 frames per row, so that each static code is also drawn under
            dynamics other than its own (sdcd.augmentation.swap_term).
        cycle_weight: Weight of the swap-cycle term, a named departure (sdcd.cycle; 0 = off, the
            paper): A's static code with the next row's dynamics, h(λ_B, f_A), must give f_A back
            through the static encoder.
        consistency_weight: Weight of the static consistency term, a named departure
            (sdcd.static.static_consistency; 0 = off, the paper): how far each frame's static mean μ_t
            lies from its sequence's aggregate, in the frame posterior's own (detached) standard
            deviations. The shuffle lets anything constant over a sequence into f, and the per-frame
            encoder sees each frame's pose: averaged over a sequence, what μ_t keeps of the pose is a
            signature of the action. Measured on Sprites at 20: the frames hold together, the action's
            probe from f does not fall (README, "Holding the frames' static means together").
        cycle_reader: "fixed" (the static encoder reads h(λ_B, f_A) with detached weights),
            "trained" (it also learns from the cycle as the reader), "appearance" (fixed, and only
            the directions of f that the colour augmentation moves are compared; needs
            augmentation_weight > 0), or "invariant" (only the reader learns: h(λ_B, f_A) is made
            without gradients and must read as A's own posterior mean); sdcd.cycle says why.
        cycle_start: The optimizer step from which the cycle term is charged (0: from the start); keyed
            on the step alone, like the lr schedule.
        cycle_form: "each" (every swap must read back as its static code) or "pair" (the two swaps of
            a pair of rows must read back as the sum of their static codes; sdcd.cycle).
        cycle_units: The units a cycle residual is charged in: "posterior" (A's posterior standard
            deviations) or "batch" (the target's standard deviation across the batch, per dimension, the
            scale a probe on standardised codes divides by; measured on Sprites: no effect, sdcd.cycle).
        cycle_code: The static code of A the cycle's swaps are drawn from: a "sample" of q(f | e_A) (as
            the swap test draws it) or its "mean" (sdcd.cycle says why).
        cycle_anchor: For the "invariant" reader: hold the target, A's own posterior mean, fixed (detached),
            so that only the reading of the swap learns (sdcd.cycle says why).
        cycle_subspace_mass: For the "appearance" reader: the fraction of the variance of f's
            colour-augmentation moves that the compared subspace keeps (its leading directions; 0.99).
        cycle_subspace_momentum: For the "appearance" reader: momentum of the running average of that
            variance's covariance, one update per training step (0.99).
        stage: "joint" (the paper), or the two-stage recipe's "autoencoder" / "disentangle" (sdcd.stages).
        autoencoder_checkpoint: For stage "disentangle": the checkpoint whose frame autoencoder is
            loaded and frozen when fit starts from scratch.
        feature_cache: For stage "disentangle": compute the frozen features of the training split once
            and add the feature noise per step (false re-encodes every batch).
        autoencoder_frames: For stage "autoencoder": the frames of each sequence a training step
            reconstructs, drawn at random per sequence (0 = all T). The frames of one sequence are
            near-copies in appearance, so k of T carry most of what a step learns at k/T of its cost
            (sdcd.stages.sample_frames; validation still uses every frame).
    """

    def __init__(
        self,
        # architecture
        n_frames: int = 16, frame_size: int = 64, channels: int = 3, base_channels: int = 64,
        latent_dim: int = 128, static_hidden: int = 128, static_encoder: str = "mlp",
        flow_layers: int = 8, flow_hidden: int = 256, temporal_layer: bool = True,
        prior_layers: int = 8, prior_hidden: int = 256, lstm_hidden: int = 256, lstm_layers: int = 2,
        # objective
        kl_weight: float = 0.2, flow_weight: float = 20.0, dynamic_prior_weight: float = 0.0025,
        feature_noise: float = 1.0, variance_floor: float = 1e-6,
        # optimisation and speed
        lr: float = 1e-3, grad_clip_norm: float = 0.5, compile: bool = False, channels_last: bool = False,
        nonfinite_patience: int = 10, lr_decay_start: int = 0, lr_decay_steps: int = 0, lr_final: float = 0.05,
        # named departures (off by default) and the two-stage recipe
        lowpass_weight: float = 0.0, lowpass_kernel: int = 4,
        augmentation_weight: float = 0.0, augmentation_loss: str = "infonce", augmentation_temperature: float = 0.1,
        augmentation_colours: str = "permute", augmentation_gamma_spread: float = 3.0,
        augmentation_copies: str = "fixed", augmentation_normalise: bool = False,
        augmentation_time: str = "same", cycle_weight: float = 0.0, consistency_weight: float = 0.0,
        cycle_reader: str = "fixed", cycle_form: str = "each", cycle_subspace_mass: float = 0.99,
        cycle_subspace_momentum: float = 0.99, cycle_start: int = 0, cycle_units: str = "posterior",
        cycle_code: str = "sample", cycle_anchor: bool = False,
        stage: str = "joint", autoencoder_checkpoint: str | None = None, feature_cache: bool = True,
        autoencoder_frames: int = 0,
    ):
        super().__init__()
        check_hparams(choices={"augmentation_loss": AUGMENTATION_LOSSES, "augmentation_colours": AUGMENTATION_COLOURS,
                               "augmentation_time": AUGMENTATION_TIMES, "augmentation_copies": AUGMENTATION_COPIES,
                               "cycle_reader": CYCLE_READERS, "cycle_form": CYCLE_FORMS, "cycle_units": CYCLE_UNITS,
                               "cycle_code": CYCLE_CODES,
                               "stage": STAGES}, at_least_two=("n_frames",),
                      positive=("latent_dim", "lr", "augmentation_temperature", "lowpass_kernel"),
                      non_negative=("kl_weight", "flow_weight", "grad_clip_norm", "dynamic_prior_weight",
                                    "feature_noise", "augmentation_weight", "cycle_weight", "consistency_weight",
                                    "lr_decay_start", "cycle_start",
                                    "lr_decay_steps", "lr_final", "lowpass_weight"), **locals())
        check_stage_args(stage, autoencoder_checkpoint, autoencoder_frames, n_frames)
        if augmentation_time != "same" and augmentation_loss != "swap":
            raise ValueError(f"model.augmentation_time={augmentation_time} re-orders the copy for the swap form "
                             f"only: needs model.augmentation_loss=swap, got {augmentation_loss}")
        if augmentation_normalise and augmentation_loss != "swap":
            raise ValueError(f"model.augmentation_normalise=true scales the swap form only (the others compare "
                             f"dynamic codes, not features): needs model.augmentation_loss=swap, "
                             f"got {augmentation_loss}")
        if augmentation_gamma_spread < 1:
            raise ValueError(f"model.augmentation_gamma_spread={augmentation_gamma_spread} must be ≥ 1 "
                             f"(the powers are log-uniform in [1/spread, spread])")
        if lowpass_weight > 0 and frame_size % lowpass_kernel:
            raise ValueError(f"model.lowpass_kernel={lowpass_kernel} must divide model.frame_size={frame_size}")
        check_cycle_args(cycle_weight, cycle_reader, augmentation_weight, cycle_subspace_mass, cycle_subspace_momentum,
                         cycle_units, cycle_anchor)
        self.save_hyperparameters()
        d = latent_dim
        self.encoder = FrameEncoder(frame_size, channels, base_channels, d)
        self.mean_net = torch.nn.Linear(d, d)
        self.decoder = FrameDecoder(frame_size, channels, base_channels, d)
        self.static_encoder = StaticEncoder(d, static_hidden, d, static_encoder)
        self.static_prior = StaticPrior(d, prior_layers, prior_hidden)
        self.flow = ConditionalFlow(d, flow_layers, flow_hidden, temporal_layer)
        self.dynamic_prior = LSTMPrior(d, lstm_hidden, lstm_layers)
        self._compiled_loss_terms = None  # torch.compile(self.loss_terms), made by configure_model
        self.feature_cache = FeatureCache()  # stage 2's frozen feature means (not saved)
        # the "appearance" cycle reader's running subspace (saved; absent otherwise, so older checkpoints load)
        self.appearance_subspace = (AppearanceSubspace(d, cycle_subspace_mass, cycle_subspace_momentum)
                                    if cycle_reader == "appearance" else None)
        if stage == "disentangle":
            freeze_autoencoder(self)
        # whether the cycle term is charged at this step: set from global_step when each training batch
        # starts (a plain bool, so a compiled objective recompiles once when it flips, not every step)
        self.cycle_active = cycle_start == 0

    # ---------------------------------------------------------------- building blocks
    def frame_features(self, x: torch.Tensor, noise: bool = True) -> torch.Tensor:
        """x: (B, T, C, H, W) → features e: (B, T, D) = frame mean + feature_noise·N(0, I)."""
        b = x.shape[0]
        mean = self.mean_net(self.encoder(rearrange(x, "b t c h w -> (b t) c h w")))
        e = mean + self.hparams.feature_noise * torch.randn_like(mean) if noise else mean
        return rearrange(e, "(b t) d -> b t d", b=b)

    def decode_features(self, e: torch.Tensor) -> torch.Tensor:
        """e: (B, T, D) → frames (B, T, C, H, W)."""
        b = e.shape[0]
        return rearrange(self.decoder(rearrange(e, "b t d -> (b t) d")), "(b t) c h w -> b t c h w", b=b)

    def static_posterior(self, e: torch.Tensor):
        """e: (B, T, D) → frame codes f_t (B, T, D) (sampled in training, means in eval) and the
        aggregated posterior's mean and variance (B, D)."""
        return self.aggregate_static(*self.static_encoder(e))

    def aggregate_static(self, mu_t: torch.Tensor, logvar_t: torch.Tensor):
        """Frame posteriors' means and log-variances (B, T, D) → (f_t, mean, variance) as static_posterior."""
        f_t = mu_t + torch.exp(0.5 * logvar_t) * torch.randn_like(mu_t) if self.training else mu_t
        mu, var = product_of_gaussians(mu_t, logvar_t, self.hparams.variance_floor)
        return f_t, mu, var

    def permute_frames(self, f_t: torch.Tensor) -> torch.Tensor:
        """The shuffle constraint (sdcd.shuffle) on frame-wise static codes f_t: (B, T, D)."""
        return permute_along_time(f_t, self.shuffle_mode, self.shuffle_generator)

    # ---------------------------------------------------------------- training objective
    def loss_terms(self, x: torch.Tensor, shuffle: bool, cached: tuple | None = None) -> dict[str, torch.Tensor]:
        """All loss terms for a batch x: (B, T, C, H, W); each summed over a sequence, batch-averaged.
        `cached`: stage 2's (feature means, colour-permuted feature means or None) of the batch's rows."""
        hp = self.hparams
        frozen = hp.stage == "disentangle"
        if hp.autoencoder_frames and self.training:  # stage 1 only (check_stage_args)
            x = sample_frames(x, hp.autoencoder_frames)
        if cached is not None:
            e = cached[0] + hp.feature_noise * torch.randn_like(cached[0])
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                e = self.frame_features(x)
        if frozen and self.training:  # the frozen decoder has nothing to learn: skip it
            sse = recon_loss = e.new_zeros((), dtype=torch.float32)
        else:
            recon = self.decode_features(e)
            sse = recon_loss = ((recon.float() - x.float()) ** 2).flatten(1).sum(1).mean()
            if hp.lowpass_weight > 0:  # a named departure (sdcd.autoencoder.lowpass_sse)
                recon_loss = sse + hp.lowpass_weight * lowpass_sse(recon, x, hp.lowpass_kernel)
        if hp.stage == "autoencoder":
            zero = torch.zeros_like(sse)
            return {"loss": recon_loss, "sse": sse, "kl": zero, "nll_flow": zero, "nll_prior": zero}

        terms = self.disentanglement_terms(e.detach(), shuffle)  # its gradients never reach the autoencoder
        terms["loss"] = recon_loss + terms["loss"]
        terms["sse"] = sse
        e_aug = None
        if hp.augmentation_weight > 0 and self.training:  # a named departure (sdcd.augmentation)
            e_aug = augmented_features(self, x, e.detach(), cached)
            terms["augmentation"] = colour_augmentation(self, e.detach(), e_aug)
            # the features' scale, logged whenever the term is on: a raw swap weight means something only
            # relative to it (augmentation_normalise divides the swap form by it)
            terms["feature_variance"] = feature_variance(e.detach())
            terms["loss"] = terms["loss"] + hp.augmentation_weight * terms["augmentation"]
        if hp.cycle_weight > 0 and self.training and self.cycle_active:  # a named departure (sdcd.cycle)
            terms["cycle"] = swap_cycle_term(self, e.detach(), e_aug)
            terms["loss"] = terms["loss"] + hp.cycle_weight * terms["cycle"]
        return terms

    def disentanglement_terms(self, e_in: torch.Tensor, shuffle: bool) -> dict[str, torch.Tensor]:
        """The static KL and flow terms on (detached) frame features e_in: (B, T, D); "loss" is their
        weighted sum, without the reconstruction."""
        hp = self.hparams
        mu_t, logvar_t = self.static_encoder(e_in)
        f_t, mu, var = self.aggregate_static(mu_t, logvar_t)
        f = mu + var.sqrt() * torch.randn_like(mu)
        kl = (gaussian_log_prob(f, mu, var) - self.static_prior.log_prob(f)).mean()

        t = e_in.shape[1]
        aggregated = repeat(f, "b d -> b t d", t=t)
        context = self.permute_frames(f_t) if shuffle else aggregated
        lam, log_p = self.flow.inverse_and_log_prob(e_in, context)
        nll_flow = -log_p.mean()
        nll_prior = -self.dynamic_prior.log_prob(lam.detach()).mean()
        loss = hp.kl_weight * kl + hp.flow_weight * (nll_flow + hp.dynamic_prior_weight * nll_prior)
        terms = {"loss": loss, "kl": kl, "nll_flow": nll_flow, "nll_prior": nll_prior}
        if hp.consistency_weight > 0:  # a named departure (sdcd.static.static_consistency)
            terms["consistency"] = static_consistency(mu_t, logvar_t, mu)
            terms["loss"] = loss + hp.consistency_weight * terms["consistency"]
        if shuffle:  # the aggregated-code NLL is what evaluation uses: log it, don't optimise it
            with torch.no_grad():
                terms["nll_flow_aggregated"] = -self.flow.inverse_and_log_prob(e_in, aggregated)[1].mean()
        return terms

    def cached_features(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage 2: feature means (B, T, D) of rows `index` of `split`, and of their cached colour-changed
        copies (None unless the augmentation term is on with `augmentation_copies=fixed`)."""
        hp = self.hparams
        copy = self.colour_copy if hp.augmentation_weight > 0 and hp.augmentation_copies == "fixed" else None
        return self.feature_cache.get(self, self.trainer.datamodule, split, index, copy)

    def colour_copy(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (B, T, C, H, W) with its colours changed as `augmentation_colours` says (sdcd.augmentation)."""
        hp = self.hparams
        return augment_colours(x, hp.augmentation_colours, generator, hp.augmentation_gamma_spread)

    def training_loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        loss_terms = self._compiled_loss_terms or self.loss_terms
        hp = self.hparams
        if hp.stage == "disentangle" and hp.feature_cache and "index" in batch:
            cached = self.cached_features(batch.get("split", "train"), batch["index"])
            return loss_terms(batch["x"], shuffle=self.shuffle, cached=cached)
        return loss_terms(batch["x"], shuffle=self.shuffle)  # (subclasses may override loss_terms(x, shuffle))

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.cycle_active = self.global_step >= self.hparams.cycle_start

    def configure_model(self) -> None:
        """The speed switches; Lightning calls this at the start of every fit/validate/test."""
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.hparams.compile and self._compiled_loss_terms is None:
            problem = compiler_problem()
            if problem:  # a speed switch only: the same objective runs eagerly
                rank_zero_warn(f"model.compile=true: {problem}; training without torch.compile "
                               "(install a C++ compiler such as g++, or pass --model.compile=false)")
            else:
                self._compiled_loss_terms = torch.compile(self.loss_terms)  # compiles on the first step

    optional_state = ("appearance_subspace.",)  # checkpoints may lack it or have it (on_load_checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A run resumed with the "appearance" cycle reader switched on (or off) since the checkpoint:
        its running subspace starts empty (or is dropped), so `--ckpt_path` still loads."""
        state, (prefix,) = checkpoint["state_dict"], self.optional_state
        if self.appearance_subspace is None:
            for key in [k for k in state if k.startswith(prefix)]:
                del state[key]
        else:
            for name, buf in self.appearance_subspace.named_buffers():
                state.setdefault(prefix + name, torch.zeros_like(buf))

    def load_autoencoder(self, path: str | os.PathLike) -> None:
        """Copy the frame encoder, mean net and decoder weights from an SDCD checkpoint file."""
        load_autoencoder(self, path)

    def setup(self, stage: str) -> None:
        load_autoencoder_for_fit(self, stage)
        super().setup(stage)  # checks the data's shapes

    # ---------------------------------------------------------------- public API (evaluation, pictures)
    def encode(self, x: torch.Tensor, mean: bool = False) -> Codes:
        """x: (B, T, C, H, W) → Codes (aggregated static code, dynamic codes given it, features).

        As in the official code the features carry their unit noise and f is a sample of q(f|x), also
        at test time; `mean=True` uses the noise-free features and the posterior mean instead."""
        return self.codes_of_features(self.frame_features(x, noise=not mean), mean)

    def codes_of_features(self, e: torch.Tensor, mean: bool = False) -> Codes:
        """Frame features e: (B, T, D) → Codes (f sampled from q(f|e), or its mean with `mean=True`)."""
        _, mu, var = self.static_posterior(e)
        f = mu if mean else mu + var.sqrt() * torch.randn_like(mu)
        lam, _ = self.flow.inverse_and_log_prob(e, repeat(f, "b d -> b t d", t=e.shape[1]))
        return Codes(f=f, f_mean=mu, lam=lam, features=e)

    def decode(self, f: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """Static code f: (B, D) and dynamic codes λ: (B, T, D) → frames (B, T, C, H, W)."""
        e = self.flow.generate(lam, repeat(f, "b d -> b t d", t=lam.shape[1]))
        return self.decode_features(e.to(f.dtype))

    def sample_static(self, n: int) -> torch.Tensor:
        """n static codes f: (n, D) from the RealNVP prior."""
        return self.static_prior.sample_like(n, self.mean_net.weight)

    def sample_dynamics(self, n: int, n_frames: int | None = None, mean: bool = False) -> torch.Tensor:
        """n dynamic trajectories λ: (n, T, D) from the LSTM prior (decode them with any static code)."""
        return self.dynamic_prior.sample(n, n_frames or self.hparams.n_frames, self.device, mean=mean)
