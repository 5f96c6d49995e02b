"""EMA of the UNet weights: the official LitEma update, swapping weights in and out."""

from __future__ import annotations

import torch

from zoomfeat.runtime.ema import EMA


def test_litema_schedule_and_swap():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    net[1].bias.requires_grad_(False)  # frozen tensors get no shadow
    ema = EMA(net, decay=0.9999)
    assert set(ema.state_dict()) == {"0.weight", "0.bias", "1.weight"}
    ref = {n: p.detach().clone() for n, p in net.named_parameters()}
    for k in range(1, 4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update(net)
        d = min(0.9999, (1 + k) / (10 + k))  # LitEma: decay warms up with the update count
        for n, p in net.named_parameters():
            if n in ref:
                if p.requires_grad:
                    ref[n] = ref[n] - (1 - d) * (ref[n] - p.detach())
        for n in ema.names:
            torch.testing.assert_close(ema.shadow[n], ref[n], rtol=0, atol=1e-6)
    assert ema.num_updates == 3
    live = {n: p.detach().clone() for n, p in net.named_parameters()}
    with ema.swapped_into(net):
        assert torch.equal(net[0].weight, ema.shadow["0.weight"])
    for n, p in net.named_parameters():
        assert torch.equal(p, live[n])
    const = EMA(net, decay=0.5, warmup=False)
    assert const.current_decay() == 0.5
