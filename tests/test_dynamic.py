"""sdcd.dynamic: the conditional flow h inverts, its log-determinant is exact (autograd Jacobian) and
its temporal layer is causal."""

import pytest
import torch
from helpers.flows import randomise, std_normal_log_prob

from sdcd.dynamic import ConditionalFlow

torch.manual_seed(0)


@pytest.mark.parametrize("temporal", [True, False])
def test_conditional_flow_inverts(temporal):
    flow = ConditionalFlow(features=6, n_layers=4, hidden=16, temporal=temporal).double()
    randomise(flow)
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
    randomise(flow)
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
    randomise(flow)
    x, ctx = torch.randn(1, 4, 4, dtype=torch.double), torch.randn(1, 4, 4, dtype=torch.double)
    jac = torch.autograd.functional.jacobian(lambda v: flow._transform(v.reshape(1, 4, 4), context=ctx)[0].reshape(-1),
                                             x.reshape(-1)).reshape(4, 4, 4, 4)
    for t_out in range(4):
        for t_in in range(t_out + 1, 4):
            assert jac[t_out, :, t_in].abs().max() == 0  # λ_t never depends on future frames
    assert jac[1, :, 0].abs().max() > 0  # but does depend on the previous one
