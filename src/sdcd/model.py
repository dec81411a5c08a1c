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
from pathlib import Path
from typing import NamedTuple

import torch
from einops import rearrange, repeat
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from sdcd.flows import ConditionalFlow, StaticPrior
from sdcd.networks import (
    FrameDecoder,
    FrameEncoder,
    LSTMPrior,
    StaticEncoder,
    gaussian_log_prob,
    product_of_gaussians,
)

SHUFFLE_MODES = ("batch", "sequence")
STAGES = ("joint", "autoencoder", "disentangle")
AUTOENCODER = ("encoder", "mean_net", "decoder")  # the frame autoencoder's submodules
GUARDED_TERMS = ("sse", "kl", "nll_flow", "nll_prior")  # the optimised loss terms


def permute_colours(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (B, T, C=3, H, W) with each sequence's colour channels permuted by a random non-identity
    permutation (the same for all its frames): the motion augmentation."""
    perms = torch.tensor([(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)], device=x.device)
    if x.shape[2] != 3:
        raise ValueError(f"model.augmentation_weight > 0 permutes RGB channels: needs 3 channels, got {x.shape[2]}")
    choice = torch.randint(0, len(perms), (x.shape[0],), generator=generator,
                           device="cpu" if generator is not None else x.device)
    idx = perms[choice.to(x.device)]  # (B, 3)
    return torch.gather(x, 2, idx[:, None, :, None, None].expand(-1, x.shape[1], -1, *x.shape[3:]))


class NonFiniteLossError(RuntimeError):
    """Raised after `nonfinite_patience` consecutive non-finite training steps."""


class Codes(NamedTuple):
    """What `SDCD.encode` returns for x: (B, T, C, H, W)."""

    f: torch.Tensor  # (B, D) aggregated static code (a sample of q(f | x), as in the official code)
    f_mean: torch.Tensor  # (B, D) its mean
    lam: torch.Tensor  # (B, T, D) dynamic codes h⁻¹(e, f)
    features: torch.Tensor  # (B, T, D) frame features e_t


class SDCD(LightningModule):
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
        grad_clip_norm: Gradient-norm clipping, always on (0.5); 0 disables it.
        compile: Compile the training objective (`loss_terms`, forward and backward) with torch.compile
            when fit starts; validation, test and evaluation stay eager. The first steps pay the compile.
        channels_last: Keep the conv weights, hence the conv activations, in channels_last memory format.
        nonfinite_patience: K. A step whose loss or gradient is not finite is skipped on the device
            (the fused Adam kernel's found_inf flag: no host sync) and counted; training stops with an
            error naming the bad loss term after K consecutive bad steps (checked every K steps).
            0 disables the stop (bad steps are still skipped).
        judge_path: Judge file used by evaluation (`make judge DATA=…` writes one); None: no judge
            metrics. Only the path is stored in checkpoints, never the judge's weights.
        eval_repeats: R, repetitions of the test-time evaluation protocol (fresh random draws each).
        eval_every_n_epochs: During fit, run the protocol (one repeat) on a fixed validation subset
            every N epochs; 0 = off.
        eval_val_sequences: Size of that fixed validation subset (its first N sequences).
        peers_protocol: At test time also run the C-DSVAE/SPYL/DBSE variant on this factor's head
            (e.g. "action" on Sprites); None = off.
        augmentation_weight: Weight of the motion-augmentation term (0 = off, the paper). A departure
            from the paper, after C-DSVAE's "motion augmentation": each training sequence is also
            encoded with its RGB channels permuted (a random non-identity permutation per sequence:
            colours change, shapes and motion do not), and the two copies' dynamic codes λ (each
            given its own aggregated static code) must agree: `augmentation_loss` says how. The
            term, times this weight, is added to the loss. What it does on Sprites: README,
            "Sprites on a CPU".
        augmentation_loss: "infonce": each sequence's λ must pick out its colour-permuted copy among
            the batch's (cosine similarity of the flattened λ / `augmentation_temperature`,
            cross-entropy; C-DSVAE's contrastive form); "mse": the squared distance, summed over
            frames and dimensions.
        augmentation_temperature: Temperature of the InfoNCE form.
        eval_probes: At test time also fit linear probes of every factor from f and from the time-mean
            of λ on the training split, scored on the test split (`sdcd.probes`; leakage at a glance).
        stage: "joint" trains everything at once (the paper; the autoencoder still learns from the
            reconstruction only, because its features are detached). The two-stage recipe splits
            that in two runs: "autoencoder" trains only the frame autoencoder (reconstruction), and
            "disentangle" trains only the static encoder, static prior, flow and LSTM prior on the
            features of the frozen autoencoder loaded from `autoencoder_checkpoint` (the paper
            figure's "fixed encoder"); its steps skip the decoder and every conv backward pass.
        autoencoder_checkpoint: For stage "disentangle": a checkpoint (of any stage) whose frame
            encoder, mean net and decoder are loaded and frozen when fit starts from scratch.
        feature_cache: For stage "disentangle": compute the frozen autoencoder's feature means of the
            whole training split once, at the first step (and of one colour-permuted copy of each
            sequence, fixed per sequence, when augmentation_weight > 0); each step then adds the unit
            feature noise to its rows, so no pixel is read again. false re-encodes every batch
            (and draws a fresh permutation each time).
    """

    def __init__(
        self,
        n_frames: int = 16,
        frame_size: int = 64,
        channels: int = 3,
        base_channels: int = 64,
        latent_dim: int = 128,
        static_hidden: int = 128,
        static_encoder: str = "mlp",
        flow_layers: int = 8,
        flow_hidden: int = 256,
        temporal_layer: bool = True,
        prior_layers: int = 8,
        prior_hidden: int = 256,
        lstm_hidden: int = 256,
        lstm_layers: int = 2,
        kl_weight: float = 0.2,
        flow_weight: float = 20.0,
        dynamic_prior_weight: float = 0.0025,
        feature_noise: float = 1.0,
        variance_floor: float = 1e-6,
        lr: float = 1e-3,
        grad_clip_norm: float = 0.5,
        compile: bool = False,
        channels_last: bool = False,
        nonfinite_patience: int = 10,
        judge_path: str | None = None,
        eval_repeats: int = 5,
        eval_every_n_epochs: int = 0,
        eval_val_sequences: int = 1024,
        peers_protocol: str | None = None,
        augmentation_weight: float = 0.0,
        augmentation_loss: str = "infonce",
        augmentation_temperature: float = 0.1,
        eval_probes: bool = True,
        stage: str = "joint",
        autoencoder_checkpoint: str | None = None,
        feature_cache: bool = True,
    ):
        super().__init__()
        if augmentation_loss not in ("infonce", "mse"):
            raise ValueError(f"model.augmentation_loss must be infonce or mse, got {augmentation_loss!r}")
        if augmentation_temperature <= 0:
            raise ValueError(f"model.augmentation_temperature must be positive, got {augmentation_temperature}")
        if stage not in STAGES:
            raise ValueError(f"model.stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if stage == "disentangle" and not autoencoder_checkpoint:
            raise ValueError("model.stage=disentangle needs model.autoencoder_checkpoint (a checkpoint of a "
                             "stage=autoencoder or joint run)")
        for name, value in [("n_frames", n_frames - 1), ("latent_dim", latent_dim), ("lr", lr),
                            ("eval_repeats", eval_repeats), ("eval_val_sequences", eval_val_sequences)]:
            if value <= 0:
                hint = " (at least 2 frames)" if name == "n_frames" else ""
                raise ValueError(f"model.{name} must be positive{hint}, got {locals()[name]}")
        for name, value in [("kl_weight", kl_weight), ("flow_weight", flow_weight), ("grad_clip_norm", grad_clip_norm),
                            ("dynamic_prior_weight", dynamic_prior_weight), ("feature_noise", feature_noise),
                            ("eval_every_n_epochs", eval_every_n_epochs),
                            ("augmentation_weight", augmentation_weight)]:
            if value < 0:
                raise ValueError(f"model.{name} must be ≥ 0, got {value}")
        self.save_hyperparameters()
        d = latent_dim
        self.encoder = FrameEncoder(frame_size, channels, base_channels, d)
        self.mean_net = torch.nn.Linear(d, d)
        self.decoder = FrameDecoder(frame_size, channels, base_channels, d)
        self.static_encoder = StaticEncoder(d, static_hidden, d, static_encoder)
        self.static_prior = StaticPrior(d, prior_layers, prior_hidden)
        self.flow = ConditionalFlow(d, flow_layers, flow_hidden, temporal_layer)
        self.dynamic_prior = LSTMPrior(d, lstm_hidden, lstm_layers)
        # Set per training step by callbacks.ShuffleCallback (keyed on global_step). Without the
        # callback every step shuffles with one permutation per batch, as in the paper.
        self.shuffle: bool = True
        self.shuffle_mode: str = "batch"
        self.shuffle_generator: torch.Generator | None = None  # per-rank stream for "sequence" mode
        self._guard: dict[str, torch.Tensor] = {}  # non-finite step bookkeeping, on the device
        self.judge = None  # loaded at setup from judge_path; deliberately not a submodule
        self.eval_results: dict[str, dict[str, float]] = {}
        self._compiled_loss_terms = None  # torch.compile(self.loss_terms), made by configure_model
        self._features: dict[str, torch.Tensor] = {}  # stage 2's cached feature means (not saved)
        if stage == "disentangle":
            for name in AUTOENCODER:
                getattr(self, name).requires_grad_(False)

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
        mu_t, logvar_t = self.static_encoder(e)
        f_t = mu_t + torch.exp(0.5 * logvar_t) * torch.randn_like(mu_t) if self.training else mu_t
        mu, var = product_of_gaussians(mu_t, logvar_t, self.hparams.variance_floor)
        return f_t, mu, var

    def permute_frames(self, f_t: torch.Tensor) -> torch.Tensor:
        """The shuffle constraint: permute frame-wise static codes along time. f_t: (B, T, D)."""
        b, t, _ = f_t.shape
        if self.shuffle_mode == "batch":  # one permutation for the whole batch (the paper)
            return f_t[:, torch.randperm(t, device=f_t.device)]
        gen = self.shuffle_generator
        gen = gen if gen is not None and gen.device == f_t.device else None
        keys = torch.rand(b, t, device=f_t.device, generator=gen)
        perm = keys.argsort(dim=1)  # one permutation per sequence
        return torch.gather(f_t, 1, repeat(perm, "b t -> b t d", d=f_t.shape[-1]))

    # ---------------------------------------------------------------- training objective
    def loss_terms(self, x: torch.Tensor, shuffle: bool, cached: tuple | None = None) -> dict[str, torch.Tensor]:
        """All loss terms for a batch x: (B, T, C, H, W); each summed over a sequence, batch-averaged.
        `cached`: stage 2's (feature means, colour-permuted feature means or None) of the batch's rows."""
        hp = self.hparams
        frozen = hp.stage == "disentangle"
        if cached is not None:
            e = cached[0] + hp.feature_noise * torch.randn_like(cached[0])
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                e = self.frame_features(x)
        if frozen and self.training:  # the frozen decoder has nothing to learn: skip it
            sse = e.new_zeros((), dtype=torch.float32)
        else:
            recon = self.decode_features(e)
            sse = ((recon.float() - x.float()) ** 2).flatten(1).sum(1).mean()
        if hp.stage == "autoencoder":
            zero = torch.zeros_like(sse)
            return {"loss": sse, "sse": sse, "kl": zero, "nll_flow": zero, "nll_prior": zero}

        terms = self.disentanglement_terms(e.detach(), shuffle)  # its gradients never reach the autoencoder
        terms["loss"] = sse + terms["loss"]
        terms["sse"] = sse
        if hp.augmentation_weight > 0 and self.training:
            if cached is not None:
                e_aug = cached[1] + hp.feature_noise * torch.randn_like(cached[1])
            else:
                with torch.no_grad():  # the augmented copy trains the disentanglement part only
                    e_aug = self.frame_features(permute_colours(x))
            terms["augmentation"] = self.augmentation_term(self.codes_of_features(e.detach()).lam,
                                                           self.codes_of_features(e_aug).lam)
            terms["loss"] = terms["loss"] + hp.augmentation_weight * terms["augmentation"]
        return terms

    def augmentation_term(self, lam: torch.Tensor, lam_aug: torch.Tensor) -> torch.Tensor:
        """How far the dynamic codes of sequences and of their colour-permuted copies disagree (B, T, D)."""
        if self.hparams.augmentation_loss == "mse":
            return ((lam.float() - lam_aug.float()) ** 2).sum((1, 2)).mean()
        a = torch.nn.functional.normalize(lam.flatten(1).float(), dim=1)
        b = torch.nn.functional.normalize(lam_aug.flatten(1).float(), dim=1)
        logits = a @ b.T / self.hparams.augmentation_temperature  # (B, B): row i should pick column i
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(a), device=a.device))

    def disentanglement_terms(self, e_in: torch.Tensor, shuffle: bool) -> dict[str, torch.Tensor]:
        """The static KL and flow terms on (detached) frame features e_in: (B, T, D); "loss" is their
        weighted sum, without the reconstruction."""
        hp = self.hparams
        f_t, mu, var = self.static_posterior(e_in)
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
        if shuffle:  # the aggregated-code NLL is what evaluation uses: log it, don't optimise it
            with torch.no_grad():
                terms["nll_flow_aggregated"] = -self.flow.inverse_and_log_prob(e_in, aggregated)[1].mean()
        return terms

    @torch.no_grad()
    def cached_features(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage 2: the frozen autoencoder's feature means (B, T, D) of rows `index` of `split` (and of
        their colour-permuted copies, or None), computed for the whole split on first use."""
        if split not in self._features:
            dm = self.trainer.datamodule
            n, parts, aug = dm.split_size(split), [], []
            gen = torch.Generator().manual_seed(0)  # one fixed permutation per sequence
            rank_zero_info(f"sdcd: stage 2: caching the frozen autoencoder's features of the {n} {split} sequences")
            for rows in torch.arange(n).split(256):
                x = dm.batch(split, rows, device=self.device)["x"]
                parts.append(self.frame_features(x, noise=False).float())
                if self.hparams.augmentation_weight > 0:
                    aug.append(self.frame_features(permute_colours(x, gen), noise=False).float())
            self._features[split] = torch.cat(parts)
            if aug:
                self._features[split + "/aug"] = torch.cat(aug)
        index = index.to(self._features[split].device)
        aug = self._features.get(split + "/aug")
        return self._features[split][index], None if aug is None else aug[index]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss_terms = self._compiled_loss_terms or self.loss_terms
        cached = None
        if self.hparams.stage == "disentangle" and self.hparams.feature_cache and "index" in batch:
            cached = self.cached_features(batch.get("split", "train"), batch["index"])
        extra = {} if cached is None else {"cached": cached}  # (subclasses may override loss_terms(x, shuffle))
        terms = loss_terms(batch["x"], shuffle=self.shuffle, **extra)
        loss, b = terms.pop("loss"), batch["x"].shape[0]
        # which optimised terms are non-finite: (len(GUARDED_TERMS),) bool, read by the guard below
        self._guard["bad_terms"] = torch.stack([~torch.isfinite(terms[k].detach()) for k in GUARDED_TERMS])
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=b)
        return loss

    def _evaluate(self, split: str, repeats: int, max_sequences: int | None, progress: bool) -> dict:
        from sdcd.evaluation import evaluate

        self.judge.to(self.device)
        return evaluate(self, self.trainer.datamodule, self.judge, split=split, repeats=repeats,
                        max_sequences=max_sequences, seed=self.current_epoch, rank=self.global_rank,
                        world_size=self.trainer.world_size, progress=progress)

    def on_validation_epoch_end(self) -> None:
        n = self.hparams.eval_every_n_epochs
        if self.judge is None or not n or self.trainer.sanity_checking or (self.current_epoch + 1) % n:
            return
        results = self._evaluate("val", 1, self.hparams.eval_val_sequences, progress=False)
        self.log_dict({f"val/eval/{k}": v["mean"] for k, v in results.items()}, rank_zero_only=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.loss_terms(batch["x"], shuffle=False)
        self.log_dict({f"test/{k}": v for k, v in terms.items()}, sync_dist=True, batch_size=batch["x"].shape[0])

    def on_test_epoch_end(self) -> None:
        if self.judge is None:
            return
        from sdcd.evaluation import markdown_table, peers_protocol, write_results

        hp, t = self.hparams, self.trainer
        # honour --trainer.limit_test_batches / fast_dev_run: score as many sequences as the loop saw
        limit = t.num_test_batches[0] * t.datamodule.eval_batch_size * t.world_size
        results = self._evaluate("test", hp.eval_repeats, limit, progress=t.is_global_zero)
        if hp.peers_protocol and t.is_global_zero:
            results.update(peers_protocol(self, t.datamodule, self.judge, hp.peers_protocol, hp.eval_repeats,
                                          progress=True))
        if hp.eval_probes and t.is_global_zero and "train" in getattr(t.datamodule, "splits", ("train",)):
            from sdcd.probes import linear_probes

            probes = linear_probes(self, t.datamodule, "train", "test", max_train=10_000)
            results.update({k: {"mean": v, "std": 0.0} for k, v in probes.items()})
        self.eval_results = results
        self.log_dict({f"eval/{k}": v["mean"] for k, v in results.items()}, rank_zero_only=True)
        self.log_dict({f"eval/{k}_std": v["std"] for k, v in results.items()}, rank_zero_only=True)
        if t.is_global_zero:
            run_dir = self.results_dir()
            meta = {"checkpoint": str(t.ckpt_path or ""), "experiment": run_dir.parent.name, "split": "test",
                    "repeats": hp.eval_repeats, "judge": str(hp.judge_path), "sequences_per_repeat": limit}
            paths = write_results(run_dir, results, t.datamodule.factors, meta)
            rank_zero_info(markdown_table(results) + f"\nsdcd: wrote {paths[0]} and {paths[1]}")

    def results_dir(self) -> Path:
        """Where evaluation writes: the evaluated checkpoint's run directory, else this run's."""
        ckpt = self.trainer.ckpt_path
        if ckpt and Path(ckpt).exists():
            p = Path(ckpt).resolve().parent
            return p.parent if p.name == "checkpoints" else p
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.loss_terms(batch["x"], shuffle=False)
        b = batch["x"].shape[0]
        self.log("val/sse", terms.pop("sse"), prog_bar=True, sync_dist=True, batch_size=b)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True, batch_size=b)

    def configure_model(self) -> None:
        """The speed switches; Lightning calls this at the start of every fit/validate/test."""
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.hparams.compile and self._compiled_loss_terms is None:
            self._compiled_loss_terms = torch.compile(self.loss_terms)  # compiles on the first step

    def configure_optimizers(self):
        # fused: one kernel per step, and its found_inf input lets the guard skip a step without a sync
        params = [p for p in self.parameters() if p.requires_grad]  # not the frozen autoencoder
        return torch.optim.Adam(params, lr=self.hparams.lr, fused=True)

    def load_autoencoder(self, path: str | os.PathLike) -> None:
        """Copy the frame encoder, mean net and decoder weights from an SDCD checkpoint file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model.autoencoder_checkpoint='{path}' does not exist (expected the .ckpt "
                                    f"file of a stage=autoencoder or joint run)")
        state = torch.load(path, map_location="cpu", weights_only=False).get("state_dict", {})
        for name in AUTOENCODER:
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            try:
                getattr(self, name).load_state_dict(part)
            except RuntimeError as err:
                raise ValueError(f"model.autoencoder_checkpoint='{path}': its {name} does not fit this model "
                                 f"(same base_channels, latent_dim, frame_size and channels needed): "
                                 f"{str(err).splitlines()[0]}") from None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # The recipe's clipping is a model hyperparameter; an explicit Trainer setting still wins.
        val = gradient_clip_val if gradient_clip_val is not None else self.hparams.grad_clip_norm
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(
                f"SDCD clips gradients by norm; trainer.gradient_clip_algorithm={gradient_clip_algorithm!r}")
        params = [p for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=val or float("inf"), foreach=True)
        self._skip_if_nonfinite(optimizer, norm)

    def _skip_if_nonfinite(self, optimizer, grad_norm: torch.Tensor) -> None:
        """Numerical guard: a non-finite loss or gradient never reaches the weights (no host sync)."""
        g = self._guard
        bad_terms = g.get("bad_terms", torch.zeros(len(GUARDED_TERMS), dtype=torch.bool, device=grad_norm.device))
        bad = bad_terms.any() | ~torch.isfinite(grad_norm)
        optimizer.found_inf, optimizer.grad_scale = bad.float(), None  # fused Adam skips the whole update
        zero = torch.zeros((), device=grad_norm.device)
        g["skipped"] = g.get("skipped", zero) + bad
        streak = g.get("streak", zero)
        g["streak_start"] = torch.where(bad & (streak == 0), float(self.global_step), g.get("streak_start", zero))
        g["streak"] = (streak + 1) * bad
        # what went bad first in this streak: the loss terms, or (all False) only the gradient
        g["culprit"] = torch.where(bad & (streak == 0), bad_terms, g.get("culprit", bad_terms))
        self.log("train/skipped_steps", g["skipped"], on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        k = self.hparams.nonfinite_patience
        if not k or "streak" not in self._guard or self.global_step % k:
            return
        if int(self._guard["streak"]) >= k:  # one host sync every k steps, never inside the step
            g = self._guard
            names = [name for name, b in zip(GUARDED_TERMS, g["culprit"].tolist()) if b]
            what = (f"non-finite loss term(s) {', '.join(names)}" if names
                    else "a non-finite gradient (finite loss terms)")
            raise NonFiniteLossError(
                f"{int(g['streak'])} consecutive training steps had a non-finite loss or gradient (none of them "
                f"changed the weights); it started at step {int(g['streak_start'])} with {what}. "
                f"{int(g['skipped'])} steps were skipped in total. Lower model.lr or model.flow_weight, or raise "
                f"model.nonfinite_patience to let training try to recover."
            )

    def on_fit_start(self) -> None:
        # per-rank stream for the "sequence" shuffle mode: reproducible from (seed, rank), different per rank
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.shuffle_generator = torch.Generator(device=self.device).manual_seed(seed * 1000 + self.global_rank)

    def setup(self, stage: str) -> None:
        if (stage == "fit" and self.hparams.stage == "disentangle" and self._trainer is not None
                and not self.trainer.ckpt_path):  # a resumed run has the frozen weights in its checkpoint
            self.load_autoencoder(self.hparams.autoencoder_checkpoint)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        hp = self.hparams
        for name in ("n_frames", "frame_size", "n_channels"):
            mine = hp.channels if name == "n_channels" else hp[name]
            theirs = getattr(dm, name, None)
            if theirs is not None and theirs != mine:
                key = "channels" if name == "n_channels" else name
                raise ValueError(
                    f"model.{key}={mine} does not match the data ({type(dm).__name__}.{name}={theirs}); "
                    f"set --model.{key}={theirs} or change the data config"
                )
        wants_judge = stage == "test" or (stage == "fit" and hp.eval_every_n_epochs > 0)
        if wants_judge and self.judge is None and getattr(dm, "factors", ()):
            if hp.judge_path is None:
                if stage == "fit":
                    raise ValueError(
                        "model.eval_every_n_epochs > 0 needs model.judge_path (a judge file for this data)")
                rank_zero_info("sdcd: no model.judge_path set: test reports reconstruction only, no judge metrics")
                return
            from sdcd.judge import load_judge  # checks the judge was trained on this data config

            # a plain attribute, not a submodule: out of state_dict, parameters() and the optimiser
            object.__setattr__(self, "judge", load_judge(hp.judge_path, dm, map_location="cpu"))

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

    def swap(self, x_static: torch.Tensor, x_dynamic: torch.Tensor) -> torch.Tensor:
        """Frames with the static code of `x_static` and the dynamics of `x_dynamic` (both (B, T, C, H, W))."""
        return self.decode(self.encode(x_static).f, self.encode(x_dynamic).lam)

    def sample_static(self, n: int) -> torch.Tensor:
        """n static codes f: (n, D) from the RealNVP prior."""
        return self.static_prior.sample_like(n, self.mean_net.weight)

    def sample_dynamics(self, n: int, n_frames: int | None = None, mean: bool = False) -> torch.Tensor:
        """n dynamic trajectories λ: (n, T, D) from the LSTM prior (decode them with any static code)."""
        return self.dynamic_prior.sample(n, n_frames or self.hparams.n_frames, self.device, mean=mean)
