"""One optimiser step's parts: the learning-rate warm-up, the eps objective under gradient
checkpointing, context dropout and bf16 autocast."""

from __future__ import annotations

import torch

from zoomfeat.training.dataset import MultiScaleDataset, collate_multiscale
from zoomfeat.training.objective import DiffusionObjective, lr_at
from zoomfeat.training.shards import ShardIndex


def test_lr_warmup():
    assert [lr_at(s, 2e-5, 1000) for s in (0, 499, 999, 5000)] == [2e-8, 1e-5, 2e-5, 2e-5]


def test_objective_checkpointing_and_bf16(data):
    """Gradient checkpointing gives the same gradients; bf16 autocast runs on CPU too."""
    from zoomfeat.model import ZoomLDM

    model = ZoomLDM.from_config("tiny", seed=0)
    ds = MultiScaleDataset(ShardIndex.load(data), seed=0, p_uncond=0.5)
    batch = collate_multiscale([ds[n] for n in range(3)])
    args = (batch["latent"], batch["noise"])
    kw = {"t": batch["t"], "keep": batch["keep"], "ssl_groups": batch["ssl_groups"]}
    obj = DiffusionObjective(model).train()
    assert {n.split(".")[0] for n, _ in obj.named_parameters()} == {"unet", "summarizer"}  # VQ outside

    def grads():
        obj.zero_grad()
        loss = obj(*args, **kw)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}

    loss, g = grads()
    model.unet.enable_gradient_checkpointing()
    loss2, g2 = grads()
    # Recomputing the forward in the backward runs the same kernels on the same inputs: the
    # loss is bitwise equal, and the gradients differ at most by float32 accumulation order in
    # the backward (|dg| <= n u sum|terms| with n ~ 1e3 terms per weight, u = 2^-24: ~1e-4
    # relative to the gradient's magnitude, plus 1e-6 absolute for gradients near zero).
    torch.testing.assert_close(loss2, loss, rtol=0, atol=0)
    for n in g:
        torch.testing.assert_close(g2[n], g[n], rtol=1e-4, atol=1e-6)
    # dropped contexts are zeros: a fully dropped batch gives no gradient to the summarizer
    obj.zero_grad()
    obj(*args, **{**kw, "keep": torch.zeros_like(batch["keep"])}).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.summarizer.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(obj(*args, **kw))
