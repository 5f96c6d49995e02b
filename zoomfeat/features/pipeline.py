"""Slides -> multi-scale ZoomLDM and encoder features -> per-slide bags: the public extraction API.

(docs/ARCHITECTURE.md, "Data flow".) :class:`Extractor` loads the models once for one
:class:`~zoomfeat.features.config.ExtractConfig` (every recipe and encoder of the pass) and
extracts slides with it; each slide runs through the numbered steps of
:class:`~zoomfeat.features.slide_extraction.SlideExtraction`. :func:`extract_slide` is the
one-call form (``zoomfeat.extract_slide``).

The modules of the pipeline, by job:

- :mod:`~zoomfeat.features.config` -- the configuration (``conf/extract.yaml``) and its recipe;
- :mod:`~zoomfeat.features.recipes` -- the recipes and bag families a configuration asks for;
- :mod:`~zoomfeat.features.models` -- loading the models and the model calls;
- :mod:`~zoomfeat.features.data` / :mod:`~zoomfeat.features.noise` -- parent regions and per-tile noise;
- :mod:`~zoomfeat.features.batching` -- full model batches, rows gathered in parent order;
- :mod:`~zoomfeat.features.fuse` -- each 20x row next to its 5x parent's;
- :mod:`~zoomfeat.features.writer` / :mod:`~zoomfeat.features.outputs` -- atomic bags, provenance;
- :mod:`~zoomfeat.features.families` -- each family's config hash; which files a slide needs;
- :mod:`~zoomfeat.features.slide_extraction` -- one slide, step by step;
- :mod:`~zoomfeat.features.runner` -- many slides, shards, a summary.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.families import SlidePlan, grid_spec, pass_families, plan_slide
from zoomfeat.features.models import FeatureModels
from zoomfeat.features.outputs import SlideIdentityError, identity_clash
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
        families: ``{family: Family}`` of the pass (:mod:`zoomfeat.features.families`), each with
            its recipe dict (``spec``) and config hash (``hash``), stored in its bags.
        recipe, config_hash: the main family's (the default recipe ``zoomldm``; the first encoder
            family with ``zoomldm=false``).
        grid, grid_hash: the tiling settings and their hash (the coords files').
        timings: model and loader seconds of the last slide (for benchmarks).
    """

    def __init__(self, config: ExtractConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            cfg = ExtractConfig.from_kwargs(**kwargs)
        else:
            cfg = config.replace(**kwargs) if kwargs else config
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.models = FeatureModels(cfg, self.device, cfg.recipes(), cfg.encoder_families())
        self.families = pass_families(cfg, self.models)
        main = self.families[next(iter(self.families))]
        self.recipe, self.config_hash = main.spec, main.hash
        self.grid = grid_spec(cfg)
        self.grid_hash = config_hash(self.grid)
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------------------- outputs
    def outputs(self, out_dir: str | Path, slide_id: str) -> dict[str, Path]:
        """Final paths of one slide's bags (every family's three sets) and two coords files."""
        sets = [s for fam in self.families.values() for s in fam.sets]
        return slide_outputs(out_dir, slide_id, self.cfg.tile_px, sets=sets)

    def plan(self, out_dir: str | Path, slide_id: str) -> SlidePlan:
        """A slide's existing outputs, family by family (:func:`~zoomfeat.features.families.plan_slide`)."""
        return plan_slide(out_dir, slide_id, self.cfg.tile_px, self.families, self.grid)

    def output_state(self, out_dir: str | Path, slide_id: str) -> tuple[str, str]:
        """("complete" | "absent" | "partial" | "damaged" | "mismatch", detail) of a slide's
        existing outputs, over every family of the pass; a mismatch names the families and keys."""
        plan = self.plan(out_dir, slide_id)
        return plan.state, plan.detail

    def check_reusable(
        self, out_dir: str | Path, slide_id: str, slide: Any = None, warn: bool = True
    ) -> SlidePlan:
        """The :class:`SlidePlan` of a slide's outputs (what to write: :meth:`SlidePlan.to_write`);
        damaged files are reported (one warning naming the files, with ``warn``) and their
        families recomputed.

        Args:
            slide: the open :class:`~zoomfeat.slide.Slide`; with it, existing outputs must come
                from this very slide (same openslide quickhash and file size).

        Raises:
            SlideIdentityError: existing outputs came from another slide with this slide id
                (whatever ``overwrite`` says).
            ConfigMismatchError: bags from another config exist (unless ``overwrite``).
        """
        st = self.plan(out_dir, slide_id)
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
                "refusing to mix them: pass overwrite=true to recompute those bags, or use another out_dir"
            )
        damaged = [f"{f}: {s.detail}" for f, s in st.families.items() if s.state == "damaged"]
        if st.coords_detail and any(s == "damaged" for s in st.coords.values()):
            damaged.append(st.coords_detail)
        if damaged and warn:
            warnings.warn(
                f"{slide_id}: damaged output file(s), recomputing them: {'; '.join(damaged)}",
                DamagedOutputWarning,
                stacklevel=3,
            )
        return st

    # ----------------------------------------------------------------------------- one slide
    def extract(self, slide_path: str | Path, out_dir: str | Path, mpp: float | None = None) -> SlideResult:
        """Extract one slide into ``out_dir``; returns a :class:`SlideResult` (raises on errors)."""
        return SlideExtraction(self, slide_path, out_dir, mpp).run()


def extract_slide(
    path: str | Path, out_dir: str | Path, mpp: float | None = None, **config: Any
) -> dict[str, Path]:
    """Extract one slide; returns ``{feature_set | "patches_20x" | "patches_5x" [| "preview"]: path}``
    (every family's sets, those reused included).

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
