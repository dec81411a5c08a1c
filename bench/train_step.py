"""Training-step throughput of SDCD: steps/s, sequences/s, frames/s and achieved TFLOP/s per variant.

One step = forward of `loss_terms` with the shuffle on (as in the shuffle recipes), backward, gradient-norm
clipping, the model's non-finite guard (a found_inf flag, no host sync) and its fused Adam, on one fixed
batch of random frames already on the device: data
loading is left out here (bench/epoch.py times whole epochs, data included). FLOPs are counted once per
config with torch's FlopCounterMode over an eager fp32 forward+backward (matmuls and convolutions; the
fused LSTM kernel of the prior is not seen by the counter: ~0.4% of the total by hand count) and reported
against the device's bf16 matmul rate, measured in the same run.

    .venv/bin/python bench/train_step.py --config small                      # CPU, tiny nets
    .venv/bin/python bench/train_step.py --config dsprites sprites --batch 2 # paper nets, reduced batch
    python bench/train_step.py --device cuda --config dsprites sprites --json train_step.json

Configs take the model and batch size of an experiment YAML (`CONFIGS`). Variants (`VARIANTS`):
eager/compiled × fp32/bf16 autocast, channels_last, and CUDA graphs (torch.compile "reduce-overhead").
On CUDA, fp32 matmuls may use TF32, as `python -m sdcd` sets. The JSON is rewritten after every variant,
so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from lightning import Callback
from torch.utils.flop_counter import FlopCounterMode

from sdcd.model import SDCD

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # name -> the experiment whose model and batch size are benchmarked
    "dsprites": "experiments/dsprites_cond_shuffle.yaml",  # paper: B=64, T=16, 64×64
    "sprites": "experiments/lpc_shuffle.yaml",  # paper: B=64, T=8, 64×64
    "small": "tests/configs/tiny.yaml",  # B=16, T=4, 32×32, narrow nets (CPU)
}


@dataclass(frozen=True)
class Variant:
    bf16: bool  # bf16 autocast around the forward (Lightning's bf16-mixed); flows stay float32
    compile: str | None = None  # torch.compile mode of loss_terms, None = eager
    channels_last: bool = False  # conv weights (hence activations) in channels_last
    cuda_only: bool = False

    @property
    def precision(self) -> str:
        """The Lightning precision flag that runs this variant."""
        return "bf16-mixed" if self.bf16 else "32-true"


VARIANTS = {
    "eager_fp32": Variant(False),
    "eager_bf16": Variant(True),
    "eager_bf16_cl": Variant(True, channels_last=True),
    "compiled_fp32": Variant(False, "default"),
    "compiled_bf16": Variant(True, "default"),
    "compiled_bf16_cl": Variant(True, "default", channels_last=True),
    "compiled_bf16_cg": Variant(True, "reduce-overhead", cuda_only=True),  # + CUDA graphs
}
LIGHTNING_VARIANTS = (
    "eager_fp32",
    "eager_bf16",
    "eager_bf16_cl",
    "compiled_fp32",
    "compiled_bf16",
    "compiled_bf16_cl",
)


def load_config(name: str) -> tuple[dict, int]:
    """(SDCD init args, training batch size) of config `name`."""
    cfg = yaml.safe_load((ROOT / CONFIGS[name]).read_text())
    return dict(cfg["model"]["init_args"]), int(cfg["data"]["init_args"]["batch_size"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def environment(device: torch.device) -> dict:
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        env["card"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["card"] = cpu_name()
    return env


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, iters: int) -> float:
    """Measured rate of an n×n×n matrix product on random data (median of `iters` timed products)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e12


def count_flops(model: SDCD, x: torch.Tensor) -> int:
    """FLOPs of one eager fp32 forward+backward of the training loss (shuffle on)."""
    with FlopCounterMode(display=False) as counter:
        model.loss_terms(x, shuffle=True)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


class CompiledTrainingLoss(Callback):
    """Routes SDCD.training_step through torch.compile(loss_terms); validation and test stay eager.

    A stand-in for an SDCD `compile` switch: the instance attribute shadows the method only between
    on_train_batch_start and on_train_batch_end.
    """

    def __init__(self, model: SDCD, mode: str | None = None):
        self.fn = torch.compile(model.loss_terms, mode=mode)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.loss_terms = self.fn

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.__dict__.pop("loss_terms", None)


def apply_speed_options(model: SDCD, trainer, compile: bool, channels_last: bool) -> None:
    """Turns on compile / channels_last for a Lightning run: the model's own switches when it has them
    (`compile`, `channels_last` init args, applied in configure_model), else the stand-ins here."""
    hp = model.hparams
    if "channels_last" in hp:
        hp.channels_last = channels_last
    elif channels_last:
        model.to(memory_format=torch.channels_last)
    if "compile" in hp:
        hp.compile = compile
    elif compile:
        trainer.callbacks.append(CompiledTrainingLoss(model))


def make_step(model: SDCD, variant: Variant, device: torch.device):
    """One optimisation step on x, as SDCD under Lightning runs it: autocast forward, backward, foreach
    norm clipping, the skip flag of the non-finite guard, fused Adam."""
    loss_terms = (
        torch.compile(model.loss_terms, mode=variant.compile) if variant.compile else model.loss_terms
    )
    optimizer = model.configure_optimizers()
    params = [p for p in model.parameters() if p.requires_grad]
    clip = model.hparams.grad_clip_norm or float("inf")

    def step(x: torch.Tensor) -> torch.Tensor:
        if variant.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.bf16):
            loss = loss_terms(x, shuffle=True)["loss"]
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=clip, foreach=True)
        optimizer.found_inf = (~torch.isfinite(norm) | ~torch.isfinite(loss)).float()  # Adam skips if set
        optimizer.grad_scale = None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def run_variant(model_kwargs: dict, batch: int, variant: Variant, device: torch.device, args) -> dict:
    torch.manual_seed(0)
    model = SDCD(**model_kwargs).to(device)
    if variant.channels_last:
        model.to(memory_format=torch.channels_last)
    x = torch.rand(
        batch,
        model.hparams.n_frames,
        model.hparams.channels,
        model.hparams.frame_size,
        model.hparams.frame_size,
        device=device,
    )
    step = make_step(model, variant, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    loss = step(x)  # includes compilation for compiled variants
    sync(device)
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        loss = step(x)
    per_step = []
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step(x)
        sync(device)
        per_step.append((time.perf_counter() - start) / args.steps)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()}")
    out = {
        "first_step_s": first,
        "step_s_repeats": per_step,
        "step_s": statistics.median(per_step),
        "final_loss": float(loss),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def profile_step(model_kwargs: dict, batch: int, variant: Variant, device: torch.device, rows: int) -> str:
    """torch.profiler's table of one step (after two untimed ones): where the time goes, by op."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = SDCD(**model_kwargs).to(device)
    hp = model.hparams
    x = torch.rand(batch, hp.n_frames, hp.channels, hp.frame_size, hp.frame_size, device=device)
    step = make_step(model, variant, device)
    for _ in range(2):
        step(x)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(x)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def main(argv: list[str] | None = None) -> dict:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--config",
        nargs="+",
        choices=sorted(CONFIGS),
        default=None,
        help="default: dsprites sprites on CUDA, small on CPU",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=None,
        help="default: all that run on the device",
    )
    parser.add_argument("--batch", type=int, default=None, help="override every config's batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first one")
    parser.add_argument(
        "--matmul-size", type=int, default=None, help="n of the n³ peak product (8192 CUDA, 1024 CPU)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write the results here (after every variant)"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also print the top N ops of one profiled step per config (first variant)",
    )
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 2:
        parser.error("--batch must be ≥ 2 (FlopCounterMode's module tracker fails on one-sequence batches)")

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as python -m sdcd does on CUDA
    configs = args.config or (["dsprites", "sprites"] if device.type == "cuda" else ["small"])
    names = args.variants or [n for n, v in VARIANTS.items() if device.type == "cuda" or not v.cuda_only]
    result = {"env": environment(device), "peak": {}, "configs": {}}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")

    n = args.matmul_size or (8192 if device.type == "cuda" else 1024)
    iters = 20 if device.type == "cuda" else 3
    for dtype in (torch.bfloat16, torch.float32):
        result["peak"][f"matmul_tflops_{str(dtype)[6:]}"] = matmul_tflops(device, dtype, n, iters)
    result["peak"]["matmul_n"] = n
    peak = result["peak"]["matmul_tflops_bfloat16"]
    print(
        f"{device} ({result['env']['card']}): measured {n}³ matmul bf16 {peak:.3g} TFLOP/s, "
        f"fp32 {result['peak']['matmul_tflops_float32']:.3g} TFLOP/s",
        flush=True,
    )
    save()

    for name in configs:
        model_kwargs, batch = load_config(name)
        batch = args.batch or batch
        t = model_kwargs.get("n_frames", 16)
        torch.manual_seed(0)
        probe = SDCD(**model_kwargs).to(device)
        fs, ch = probe.hparams.frame_size, probe.hparams.channels
        flops = count_flops(probe, torch.rand(batch, t, ch, fs, fs, device=device))
        del probe
        entry = result["configs"][name] = {
            "experiment": CONFIGS[name],
            "batch": batch,
            "n_frames": t,
            "frame_size": fs,
            "flops_per_step": flops,
            "variants": {},
        }
        print(
            f"\n{name}: B={batch}, T={t}, {fs}×{fs}; {flops / 1e12:.4g} TFLOP per step (fwd+bwd)", flush=True
        )
        print(
            "| variant | ms/step | steps/s | seq/s | frames/s | TFLOP/s | % bf16 peak | % fp32 peak "
            "| first step s |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
        for vname in names:
            variant = VARIANTS[vname]
            if variant.cuda_only and device.type != "cuda":
                continue
            if variant.compile:
                torch._dynamo.reset()  # a fresh compile, never the recompile limit's eager fallback
            try:
                r = run_variant(model_kwargs, batch, variant, device, args)
            except Exception as err:  # one failing variant must not lose the others
                entry["variants"][vname] = {
                    "variant": asdict(variant),
                    "error": f"{type(err).__name__}: {err}",
                }
                print(f"| {vname} | failed: {type(err).__name__}: {str(err)[:200]} |", flush=True)
                save()
                continue
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            sps = 1 / r["step_s"]
            r.update(
                variant=asdict(variant),
                steps_per_s=sps,
                sequences_per_s=sps * batch,
                frames_per_s=sps * batch * t,
                tflops=flops * sps / 1e12,
                load_average=load_average(),
            )
            r["fraction_of_bf16_peak"] = r["tflops"] / peak
            r["fraction_of_fp32_peak"] = r["tflops"] / result["peak"]["matmul_tflops_float32"]
            entry["variants"][vname] = r
            print(
                f"| {vname} | {1000 * r['step_s']:.2f} | {sps:.2f} | {r['sequences_per_s']:.1f} | "
                f"{r['frames_per_s']:.0f} | {r['tflops']:.3g} | {100 * r['fraction_of_bf16_peak']:.1f}% | "
                f"{100 * r['fraction_of_fp32_peak']:.1f}% | {r['first_step_s']:.1f} |",
                flush=True,
            )
            save()
        if args.profile:
            first = next(v for v in names if device.type == "cuda" or not VARIANTS[v].cuda_only)
            print(f"\nprofile of one {first} step, {name} (B={batch}):")
            print(profile_step(model_kwargs, batch, VARIANTS[first], device, args.profile), flush=True)
    result["env"]["load_average_end"] = load_average()
    save()
    print(
        f"\nload average start {result['env']['load_average_start']}, end {result['env']['load_average_end']}"
    )
    return result


if __name__ == "__main__":
    main()
