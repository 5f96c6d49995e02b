"""The EMA of the UNet weights: :class:`zoomfeat.runtime.ema.EMA` (moved there, with its maths, so
the CDM trainer in ``generation/`` shares it); this name stays for the trainer and its users."""

from __future__ import annotations

from zoomfeat.runtime.ema import EMA

__all__ = ["EMA"]
