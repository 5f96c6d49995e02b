"""The request plan (dry run) per mode equals the cost formulas."""

from __future__ import annotations

from zoomfeat.generation import costs
from zoomfeat.generation.config import GenerateConfig
from zoomfeat.generation.workflow import dry_run_report, plan
from zoomfeat.runtime.config import load_config


def _gc(**kw):
    return load_config(GenerateConfig, kw, "generate")


def test_plans():
    p = dict(plan(_gc(mode="large", region={"mag": "5x"})))
    assert p["joint sampling (e=4, S=20, K=10)"] == costs.joint_counts(4, 20, 10)
    assert p["large decode"].vq_decode == 169
    s = plan(_gc(mode="superres", region={"mag": "5x"}))[0][1]
    assert s == costs.superres_counts(4, steps=20, k=5, inversion_steps=200)
    q = plan(_gc(mode="patch", patch={"count": 3}))[0][1]
    assert q.unet == 2 * 3 * 51 and q.vq_decode == 3
    c = plan(_gc(mode="cdm_train", cdm_train={"steps": 10, "batch_size": 4}))[0][1]
    assert c.dit == 40


def test_dry_run_text():
    text, total = dry_run_report(_gc(mode="large", region={"mag": "10x"}))
    assert "512x512 px at 20x (4 tiles)" in text and total.unet == 2 * 20 * (1 + 4 * 21)
