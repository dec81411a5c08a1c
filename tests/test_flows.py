"""The flows: invertibility and exact log-determinants (checked against autograd Jacobians)."""

import math

import pytest
import torch

from sdcd.dynamic import ConditionalFlow
from sdcd.flows import float32
from sdcd.static import StaticPrior

torch.manual_seed(0)


def _randomise(module: torch.nn.Module, scale: float = 0.3) -> None:
    # Fresh nets start near identity; random weights make the test meaningful.
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, scale)


def std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * (flat**2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


@pytest.mark.parametrize("temporal", [True, False])
def test_conditional_flow_inverts(temporal):
    flow = ConditionalFlow(features=6, n_layers=4, hidden=16, temporal=temporal).double()
    _randomise(flow)
    x, ctx = torch.randn(5, 3, 6, dtype=torch.double), torch.randn(5, 3, 6, dtype=torch.double)
    lam, _ = flow._transform(x, context=ctx)
    assert not torch.allclose(lam, x)
    back, _ = flow._transform.inverse(lam, context=ctx)
    torch.testing.assert_close(back, x, atol=1e-10, rtol=0)
    # and the public float32 API round-trips too
    lam32, _ = flow.float().inverse_and_log_prob(x.float(), ctx.float())
    torch.testing.assert_close(flow.generate(lam32, ctx.float()), x.float(), atol=1e-4, rtol=0)


def test_conditional_flow_logdet_matches_autograd_jacobian():
    flow = ConditionalFlow(features=4, n_layers=4, hidden=16, temporal=True).double()
    _randomise(flow)
    t, d = 3, 4
    x, ctx = torch.randn(2, t, d, dtype=torch.double), torch.randn(2, t, d, dtype=torch.double)
    lam, log_p = flow.inverse_and_log_prob(x, ctx)
    for i in range(2):
        def f(v, i=i):
            return flow._transform(v.reshape(1, t, d), context=ctx[i : i + 1])[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, x[i].reshape(-1))
        logdet = torch.linalg.slogdet(jac)[1]
        expected = std_normal_log_prob(lam[i : i + 1])[0] + logdet
        torch.testing.assert_close(log_p[i].double(), expected, atol=1e-4, rtol=1e-5)
    # the reverse direction's log-det is the negative one
    _, logdet_inv = flow._transform.inverse(lam.double(), context=ctx)
    _, logdet_fwd = flow._transform(x, context=ctx)
    torch.testing.assert_close(logdet_inv, -logdet_fwd, atol=1e-8, rtol=0)


def test_temporal_layer_is_causal_in_time():
    flow = ConditionalFlow(features=4, n_layers=2, hidden=16, temporal=True).double()
    _randomise(flow)
    x, ctx = torch.randn(1, 4, 4, dtype=torch.double), torch.randn(1, 4, 4, dtype=torch.double)
    jac = torch.autograd.functional.jacobian(lambda v: flow._transform(v.reshape(1, 4, 4), context=ctx)[0].reshape(-1),
                                             x.reshape(-1)).reshape(4, 4, 4, 4)
    for t_out in range(4):
        for t_in in range(t_out + 1, 4):
            assert jac[t_out, :, t_in].abs().max() == 0  # λ_t never depends on future frames
    assert jac[1, :, 0].abs().max() > 0  # but does depend on the previous one


def test_static_prior_inverts_and_logdet():
    prior = StaticPrior(features=6, n_layers=4, hidden=16).double()
    _randomise(prior)
    f = torch.randn(3, 6, dtype=torch.double)
    z, logdet = prior._transform(f)
    torch.testing.assert_close(prior._transform.inverse(z)[0], f, atol=1e-10, rtol=0)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: prior._transform(v[None])[0][0], f[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=0)
    torch.testing.assert_close(prior.log_prob(f).double(), std_normal_log_prob(z) + logdet, atol=1e-4, rtol=1e-5)
    assert prior.sample_like(7, f).shape == (7, 6)


def test_log_scales_are_tanh_bounded():
    flow = ConditionalFlow(features=4, n_layers=1, hidden=8, temporal=False)
    with torch.no_grad():
        for p in flow.parameters():
            p.fill_(50.0)  # huge raw scales
    x, ctx = torch.ones(2, 1, 4), torch.ones(2, 1, 4)
    _, logdet = flow._transform(x, context=ctx)
    assert torch.all(logdet.abs() <= 2 + 1e-5)  # ≤ 1 per transformed dim (2 of 4)


def test_float32_under_autocast():
    flow = ConditionalFlow(features=4, n_layers=2, hidden=8)
    x, ctx = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lam, log_p = flow.inverse_and_log_prob(x.bfloat16(), ctx.bfloat16())
    assert lam.dtype == torch.float32 and log_p.dtype == torch.float32

    @float32
    def dtype_of(a):
        return (a @ a).dtype

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dtype_of(torch.randn(2, 2)) == torch.float32
