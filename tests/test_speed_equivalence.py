"""The fast paths compute the training loss of eager fp32: bf16 autocast and torch.compile (tiny config, CPU).

Same weights and the same noise for every path: each evaluation forks the RNG and seeds it identically
(the feature noise, the static-code samples and the shuffle permutation are drawn in the same order).
Tolerances, with what was measured on the tiny config (CPU, 2026-11-27):
- bf16 autocast vs fp32: every loss term within rtol 1e-2 (bf16 keeps 8 mantissa bits, ~4e-3 per rounding;
  measured ≤ 9e-4 over three batches) and gradient cosine ≥ 0.99 (measured ≥ 0.9992).
- torch.compile (inductor, eager RNG via fallback_random) vs eager: every term within rtol 1e-5 and the
  gradient within 1e-4 relative L2 (float32 with fused, reordered reductions; measured ≤ 4e-7 and ≤ 1e-5
  over two batches).
"""

import inspect

import pytest
import torch
from torch.nn.functional import cosine_similarity

from sdcd.data_modules.dsprites import generate_sequences, render_procedural
from sdcd.model import SDCD

# SDCD's `compile` / `channels_last` switches (the model.py change of issue 7)
HAS_SWITCHES = {"compile", "channels_last"} <= set(inspect.signature(SDCD).parameters)
needs_switches = pytest.mark.skipif(not HAS_SWITCHES, reason="SDCD lacks compile/channels_last init args")


def _batch(seed: int) -> torch.Tensor:
    """8 Moving dSprites sequences of the tiny config (4 frames of 32×32), real frames rather than noise."""
    labels = torch.from_numpy(generate_sequences(8, "cond", 4, seed)).long()
    return render_procedural(labels, 32)


def _evaluate(model: SDCD, loss_terms, x: torch.Tensor, bf16: bool = False) -> tuple[dict, torch.Tensor]:
    """Loss terms and the flat gradient of the loss, with the noise seeded identically."""
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            terms = loss_terms(x, shuffle=True)
        terms["loss"].backward()
    grad = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()]
    )
    return {k: v.detach() for k, v in terms.items()}, grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_autocast_matches_fp32(tiny_model_kwargs, seed):
    torch.manual_seed(seed)
    model = SDCD(**tiny_model_kwargs)
    x = _batch(seed)
    ref, ref_grad = _evaluate(model, model.loss_terms, x)
    got, got_grad = _evaluate(model, model.loss_terms, x, bf16=True)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == torch.float32, f"{k} is {got[k].dtype} under autocast: the float32 guard broke"
        torch.testing.assert_close(got[k], ref[k], rtol=1e-2, atol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert cosine_similarity(got_grad, ref_grad, dim=0) >= 0.99


@pytest.mark.slow  # inductor compiles forward and backward: minutes on a small CPU
def test_compiled_loss_matches_eager(tiny_model_kwargs):
    torch.manual_seed(0)
    model = SDCD(**tiny_model_kwargs)
    x = _batch(0)
    ref, ref_grad = _evaluate(model, model.loss_terms, x)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):  # eager's random streams inside the graph
        compiled = torch.compile(model.loss_terms)
        for _ in range(2):  # the first call compiles, the second runs the cached graph
            got, got_grad = _evaluate(model, compiled, x)
            for k in ref:
                torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=0, msg=lambda m, k=k: f"{k}: {m}")
            assert (got_grad - ref_grad).norm() <= 1e-4 * ref_grad.norm()


@needs_switches
def test_channels_last_switch_keeps_the_loss(tiny_model_kwargs):
    torch.manual_seed(0)
    ref_model = SDCD(**tiny_model_kwargs)
    model = SDCD(**tiny_model_kwargs, channels_last=True)
    model.load_state_dict(ref_model.state_dict())
    model.configure_model()
    assert model.encoder.net[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = _batch(0)
    ref, ref_grad = _evaluate(ref_model, ref_model.loss_terms, x)
    got, got_grad = _evaluate(model, model.loss_terms, x)
    for k in ref:  # the same float32 arithmetic in another memory order: float32 rounding only
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert (got_grad - ref_grad).norm() <= 1e-4 * ref_grad.norm()


@needs_switches
def test_compile_switch_compiles_the_training_step_only(tiny_model_kwargs):
    model = SDCD(**tiny_model_kwargs, compile=True)
    model.configure_model()  # what Lightning calls at fit start; torch.compile itself is lazy
    assert callable(model._compiled_loss_terms)
    calls = []

    def spy(x, shuffle):
        calls.append(shuffle)
        return model.loss_terms(x, shuffle)

    model._compiled_loss_terms = spy
    batch = {"x": _batch(0)}
    model.training_step(batch, 0)
    assert calls == [model.shuffle]
    model.validation_step(batch, 0)  # validation stays eager
    assert calls == [model.shuffle]


@needs_switches
def test_compile_without_a_cxx_compiler_warns_and_trains_eagerly(tiny_model_kwargs, monkeypatch):
    """The recipes that switch compile on still train where inductor cannot build kernels."""
    import sdcd.model

    monkeypatch.setattr(sdcd.model, "compiler_problem", lambda: "no working C++ compiler (stand-in)")
    model = SDCD(**tiny_model_kwargs, compile=True)
    with pytest.warns(UserWarning, match=r"model.compile=true: no working C\+\+ compiler \(stand-in\); training "
                                         r"without torch.compile .*--model.compile=false"):
        model.configure_model()
    assert model._compiled_loss_terms is None  # training_loss_terms falls back to the eager loss_terms


def test_compiler_problem_names_what_inductor_raised(monkeypatch):
    from torch._inductor import cpp_builder

    from sdcd.precision import compiler_problem

    def missing():
        raise RuntimeError("Failed to find C++ compiler. Please specify via CXX environment variable.\nmore")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    assert compiler_problem() == ("no working C++ compiler (RuntimeError: Failed to find C++ compiler. "
                                  "Please specify via CXX environment variable.)")
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "g++")
    assert compiler_problem() is None
