"""zoomfeat's version, in the bottom layer so that every layer can record it in its outputs."""

__version__ = "0.1.0"
