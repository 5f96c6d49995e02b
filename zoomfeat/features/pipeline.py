"""Slides -> multi-scale ZoomLDM and UNI features -> per-slide bags: the public extraction API.

(docs/ARCHITECTURE.md, "Data flow".) :class:`Extractor` loads the models once for one
:class:`~zoomfeat.features.config.ExtractConfig` and extracts slides with it; each slide runs
through the numbered steps of :class:`~zoomfeat.features.slide_extraction.SlideExtraction`.
:func:`extract_slide` is the one-call form (``zoomfeat.extract_slide``).

The modules of the pipeline, by job:

- :mod:`~zoomfeat.features.config` -- the configuration (``conf/extract.yaml``) and its recipe;
- :mod:`~zoomfeat.features.models` -- loading the models and the three model calls;
- :mod:`~zoomfeat.features.data` / :mod:`~zoomfeat.features.noise` -- parent regions and per-tile noise;
- :mod:`~zoomfeat.features.batching` -- full model batches, rows gathered in parent order;
- :mod:`~zoomfeat.features.fuse` -- each 20x row next to its 5x parent's;
- :mod:`~zoomfeat.features.writer` / :mod:`~zoomfeat.features.outputs` -- atomic bags, reuse, provenance;
- :mod:`~zoomfeat.features.slide_extraction` -- one slide, step by step;
- :mod:`~zoomfeat.features.runner` -- many slides, shards, a summary.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.models import FeatureModels
from zoomfeat.features.outputs import SlideIdentityError, identity_clash, inspect_outputs, output_state
from zoomfeat.features.slide_extraction import SlideExtraction, SlideResult
from zoomfeat.features.writer import slide_outputs
from zoomfeat.runtime.device import resolve_device
from zoomfeat.runtime.errors import ConfigMismatchError
from zoomfeat.runtime.provenance import config_hash

__all__ = [
    "ConfigMismatchError",
    "DamagedOutputWarning",
    "Extractor",
    "SlideIdentityError",
    "SlideResult",
    "extract_slide",
]


class DamagedOutputWarning(UserWarning):
    """An existing bag or coords file is damaged (unreadable, truncated, unfinished): recomputed."""


class Extractor:
    """Loads the models once and extracts slides with one configuration.

    >>> ex = Extractor(ExtractConfig.from_kwargs(model="tiny", encoder="tiny"))
    >>> result = ex.extract("slide.svs", "features/")      # a SlideResult

    Attributes:
        cfg: the configuration; device: the resolved device; models: :class:`FeatureModels`.
        recipe: the feature-defining settings with the weights' identities; config_hash: its hash,
            stored in every bag.
        timings: model and loader seconds of the last slide (for benchmarks).
    """

    def __init__(self, config: ExtractConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            cfg = ExtractConfig.from_kwargs(**kwargs)
        else:
            cfg = config.replace(**kwargs) if kwargs else config
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.models = FeatureModels(cfg, self.device)
        recipe = cfg.recipe()
        recipe["model_checkpoint"] = self.models.model.checkpoint_hash or self.models.model.checkpoint_id
        recipe["encoder_checkpoint"] = (
            self.models.encoder.checkpoint_hash or self.models.encoder.checkpoint_id
        )
        self.recipe = recipe
        self.config_hash = config_hash(recipe)
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------------------- outputs
    def outputs(self, out_dir: str | Path, slide_id: str) -> dict[str, Path]:
        """Final paths of one slide's six bags and two coords files."""
        return slide_outputs(out_dir, slide_id, self.cfg.tile_px)

    def output_state(self, out_dir: str | Path, slide_id: str) -> tuple[str, str]:
        """("complete" | "absent" | "partial" | "mismatch", detail) of a slide's existing outputs."""
        return output_state(self.outputs(out_dir, slide_id), self.config_hash, self.recipe)

    def check_reusable(self, out_dir: str | Path, slide_id: str, slide: Any = None, warn: bool = True) -> str:
        """The state of a slide's outputs (see :meth:`output_state`); ``"damaged"`` outputs are
        reported (one warning naming the files, with ``warn``) and recomputed.

        Args:
            slide: the open :class:`~zoomfeat.slide.Slide`; with it, existing outputs must come
                from this very slide (same openslide quickhash and file size).

        Raises:
            SlideIdentityError: existing outputs came from another slide with this slide id
                (whatever ``overwrite`` says).
            ConfigMismatchError: bags from another config exist (unless ``overwrite``).
        """
        st = inspect_outputs(self.outputs(out_dir, slide_id), self.config_hash, self.recipe)
        if slide is not None:
            identity = slide.identity()
            clash = identity_clash(st.attrs, identity)
            if clash is not None:
                old_path, why = clash
                raise SlideIdentityError(
                    f"slide id '{slide_id}': the outputs in {out_dir} came from {old_path}, but {identity['path']} "
                    f"is a different slide with the same file name ({why}); not reusing or overwriting them: "
                    "rename one of the two files (the slide id is the file name), use another out_dir, or delete "
                    f"the old outputs ({out_dir}/*/*/{slide_id}.h5 and {slide_id}_patches.h5) if the slide was "
                    "replaced on purpose"
                )
        if st.state == "mismatch" and not self.cfg.overwrite:
            raise ConfigMismatchError(
                f"bags for slide '{slide_id}' in {out_dir} were written with a different config ({st.detail}); "
                "refusing to mix them: pass overwrite=true to recompute, or use another out_dir"
            )
        if st.state == "damaged" and warn:
            warnings.warn(
                f"{slide_id}: damaged output file(s), recomputing the slide: {st.detail}",
                DamagedOutputWarning,
                stacklevel=3,
            )
        return st.state

    # ----------------------------------------------------------------------------- one slide
    def extract(self, slide_path: str | Path, out_dir: str | Path, mpp: float | None = None) -> SlideResult:
        """Extract one slide into ``out_dir``; returns a :class:`SlideResult` (raises on errors)."""
        return SlideExtraction(self, slide_path, out_dir, mpp).run()


def extract_slide(
    path: str | Path, out_dir: str | Path, mpp: float | None = None, **config: Any
) -> dict[str, Path]:
    """Extract one slide; returns ``{feature_set | "patches_20x" | "patches_5x" [| "preview"]: path}``.

    ``config`` takes :meth:`ExtractConfig.from_kwargs` arguments, the command line's names:
    ``model="tiny"``, ``encoder="tiny"``, ``batch_size=8``, dotted keys through
    ``**{"features.timestep": 300}``. Models are cached between calls with the same weights.
    Complete bags with the same config are reused (delete them to force a recomputation); bags
    from another config raise :class:`ConfigMismatchError` unless ``overwrite=True``, which
    replaces them. Failures raise.
    """
    extractor = Extractor(ExtractConfig.from_kwargs(**config))
    result = extractor.extract(path, out_dir, mpp=mpp)
    if result.status == "locked":
        raise BlockingIOError(
            f"{path}: another process is extracting this slide right now (lock in {out_dir}/.locks)"
        )
    return result.paths
