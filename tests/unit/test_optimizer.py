"""The trainer's AdamW: fused where torch has the kernel, the same update as torch's reference implementation."""

from __future__ import annotations

import torch

from openchat_core.training.optimizer import adamw, fused_supported


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=g)) for n in (7, 300, 4096)]


def test_fused_adamw_on_cpu_takes_the_same_steps_as_the_reference_loop():
    fused, reference = _params(0), _params(0)
    opt = adamw(fused, lr=1e-2, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    ref = torch.optim.AdamW(reference, lr=1e-2, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1, foreach=False)
    assert opt.defaults["fused"] is True and ref.defaults["fused"] is None
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(fused, reference):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    for a, b, start in zip(fused, reference, _params(0)):
        assert (a - start).abs().max() > 1e-3  # the steps moved the weights
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # the state a checkpoint saves has the same layout, so a resume can cross the change
    assert opt.state_dict()["state"][0].keys() == ref.state_dict()["state"][0].keys()


def test_fused_only_where_torch_has_the_kernel():
    assert fused_supported([torch.zeros(2)])
    assert not fused_supported([torch.zeros(2, dtype=torch.int64)])
    assert not fused_supported([torch.zeros(2, device="meta")])
    assert not fused_supported([])
    meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert adamw(meta, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0).defaults["fused"] is None
