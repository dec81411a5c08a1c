"""bf16 on a CPU that has no bf16 arithmetic.

The CPU recipes (`experiments/*_cpu.yaml`, the CPU judge) train in `bf16-mixed`: on an x86 CPU with
AVX-512 BF16 or AMX that roughly halves a step. An x86 CPU without them (AVX2 only) emulates bf16
matmuls and convolutions, 30–70 times slower than float32. There a bf16 run on the CPU is run in
`32-true` instead, with one line saying so, and the run's config.yaml records the precision that ran.
`SDCD_CPU_BF16=keep` keeps bf16 anyway (to compare the two, say).
"""

from __future__ import annotations

import os
import platform

import torch

BF16 = ("bf16", "bf16-mixed", "bf16-true")
KEEP_ENV = "SDCD_CPU_BF16"
_X86 = ("x86_64", "amd64", "i386", "i686")


def native_cpu_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively. Only x86 is probed (AVX-512 BF16 or AMX); other
    CPUs, and a torch without the probes, are trusted with what the config asks."""
    if platform.machine().lower() not in _X86:
        return True
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [p for p in probes if callable(p)]
    return not probes or any(p() for p in probes)


def runs_on_cpu(accelerator) -> bool:
    """Whether a Trainer with this `accelerator` setting runs on the CPU."""
    if accelerator == "cpu":
        return True
    if accelerator in (None, "auto"):
        mps = getattr(torch.backends, "mps", None)
        return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
    return False


def cpu_precision(precision, accelerator) -> tuple[object, str | None]:
    """(the precision to run with, a one-line note or None) for a run configured with `precision` on
    `accelerator`: bf16 on a CPU without bf16 arithmetic becomes 32-true, unless SDCD_CPU_BF16=keep."""
    if str(precision) not in BF16 or not runs_on_cpu(accelerator) or native_cpu_bf16():
        return precision, None
    if os.environ.get(KEEP_ENV, "").lower() == "keep":
        return precision, (f"trainer.precision={precision} kept ({KEEP_ENV}=keep), although this CPU has no bf16 "
                           f"arithmetic (AVX-512 BF16 or AMX): expect it to be many times slower than 32-true")
    return "32-true", (f"this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX), so trainer.precision={precision} "
                       f"would run many times slower than float32: running with 32-true instead "
                       f"({KEEP_ENV}=keep keeps bf16)")


def compiler_problem() -> str | None:
    """Why torch.compile cannot build kernels here, or None. Inductor compiles C++ (the CPU kernels, and
    Triton's launchers on a GPU), so it needs a working C++ compiler; without one the first training
    step would fail with a long traceback."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: let torch.compile report for itself
        return None
    try:
        get_cpp_compiler()
    except Exception as err:  # noqa: BLE001 — what torch raises for a missing compiler varies by version
        return f"no working C++ compiler ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return None
