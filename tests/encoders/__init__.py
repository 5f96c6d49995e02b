"""Tests of zoomfeat.encoders (one module per encoders module)."""
