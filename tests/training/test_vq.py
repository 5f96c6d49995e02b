"""The VQ fingerprint: equal for equal weights, different for any other VQ."""

from __future__ import annotations

from zoomfeat.training.vq import vq_fingerprint


def test_fingerprint_follows_the_vq_weights():
    from zoomfeat.model import ZoomLDM

    a, b, c = (ZoomLDM.from_config("tiny", seed=s) for s in (0, 0, 1))
    assert vq_fingerprint(a) == vq_fingerprint(b) and len(vq_fingerprint(a)) == 16
    assert vq_fingerprint(a) != vq_fingerprint(c)
    c.vq.load_state_dict(a.vq.state_dict())
    assert vq_fingerprint(c) == vq_fingerprint(a)  # only the VQ counts
