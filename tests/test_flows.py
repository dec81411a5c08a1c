"""sdcd.flows: the shared flow parts (tanh-bounded log-scales, float32 under autocast)."""


import torch

from sdcd.dynamic import ConditionalFlow
from sdcd.flows import float32

torch.manual_seed(0)


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
