"""The tiny-model smoke entry point ``python -m zoomfeat.model``."""

from __future__ import annotations


def test_smoke_entry(capsys):
    from zoomfeat.model.__main__ import main

    shapes = main(["--steps", "1", "--mag", "4"])
    out = capsys.readouterr().out
    assert "ZoomLDM 'tiny'" in out and "latent" in out
    assert shapes["latent"] == (1, 3, 64, 64) and shapes["image"] == (1, 3, 256, 256)
    assert shapes["context"] == (1, 65, 64) and shapes["ssl_grid"] == (1, 32, 16, 16)
    assert shapes["tap middle_block"] == (1, 64, 8, 8)
