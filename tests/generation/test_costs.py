"""The cost formulas against the published call counts (docs/generation.md, "Costs")."""

from __future__ import annotations

from zoomfeat.generation import costs


def test_joint_4096_matches_spec_table():
    c = costs.joint_counts(16, 20, 10)  # 1.25x guide, S = 20, K = 10
    assert (c.model_pred, c.unet, c.vq_decode, c.vq_encode, c.summarizer) == (
        107_540,
        215_080,
        51_220,
        102_400,
        257,
    )
    assert abs(c.flops() - 1.15e17) / 1.15e17 < 0.01  # UNet 4.53e16 + dec 3.44e16 + enc 3.53e16
    assert costs.large_decode_counts(16).vq_decode == 3_721
    p = costs.post_counts(16, 6)
    assert (p.unet, p.summarizer) == (44_652, 3_721)
    total = c + p + costs.large_decode_counts(16) + costs.large_decode_counts(16)
    assert total.vq_decode - c.vq_decode == 7_442
    assert abs(total.flops() - 1.30e17) / 1.30e17 < 0.01  # spec: ~1.30e17 in total


def test_joint_1024_matches_spec_table():
    c = costs.joint_counts(4, 20, 10)
    assert (c.model_pred, c.unet, c.vq_decode, c.vq_encode) == (6_740, 13_480, 3_220, 6_400)
    assert abs(c.flops() - 7.2e15) / 7.2e15 < 0.01
    assert costs.post_counts(4, 6).unet == 2_028 and costs.large_decode_counts(4).vq_decode == 169


def test_superres_and_patch_and_cdm_match_spec():
    s = costs.superres_counts(4, steps=20, k=5, inversion_steps=200)
    assert (s.model_pred, s.unet - 200, s.vq_decode, s.vq_encode - 1) == (3_520, 7_040, 1_600, 3_200)
    sampling = costs.Counts(unet=7_040, vq_decode=1_600, vq_encode=3_200)
    assert (
        abs(sampling.flops() - 3.7e15) / 3.7e15 < 0.02
    )  # 4x super-resolution, K = 5: ~3.7e15 (docs/generation.md, "Costs")
    p = costs.patch_counts(1, 50, "plms", 2.0)
    assert (p.unet, p.vq_decode) == (102, 1)  # 51 calls on a batch of 2
    assert abs(p.flops() - 2.2e13) / 2.2e13 < 0.05
    assert costs.cdm_counts(1, 200).dit == 200
    assert abs((p + costs.cdm_counts(1, 200)).flops() - 2.4e13) / 2.4e13 < 0.05
    assert costs.patch_counts(2, 10, "ddim", 1.0).unet == 20  # no CFG: one call on B


def test_windows():
    assert [costs.n_windows(64 * e, 64 * e) for e in (2, 4, 16)] == [25, 169, 3_721]
