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


def test_strided_coupling_matches_nflows_indexing():
    """The alternating-mask split by strided views gives nflows' index/index_put result exactly, both ways,
    with context, and odd widths (not alternating in pairs) still take nflows' own path."""
    from nflows.transforms.coupling import CouplingTransform

    from sdcd.flows import couplings

    for features in (6, 5):
        for layer in couplings(features, 3, n_layers=2, hidden=8):
            x, ctx = torch.randn(7, features), torch.randn(7, 3)
            ours, ld = layer.forward(x, ctx)
            ref, ld_ref = CouplingTransform.forward(layer, x, ctx)  # nflows' indexing
            assert torch.equal(ours, ref) and torch.equal(ld, ld_ref)
            back, ld_inv = layer.inverse(ours, ctx)
            ref_back, ld_inv_ref = CouplingTransform.inverse(layer, ours, ctx)
            assert torch.equal(back, ref_back) and torch.equal(ld_inv, ld_inv_ref)
            assert torch.allclose(back, x, atol=1e-5)
            assert (layer._identity_parity is None) == (features % 2 == 1)
