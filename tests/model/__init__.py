"""Tests for zoomfeat.model (a package so test module names cannot clash with other test folders)."""
