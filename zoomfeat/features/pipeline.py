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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.families import ExtractionPass, SlidePlan
from zoomfeat.features.models import FeatureModels
from zoomfeat.features.outputs import SlideIdentityError
from zoomfeat.features.slide_extraction import (
    DamagedOutputWarning,
    SlideCancelled,
    SlideExtraction,
    SlideHooks,
    SlideResult,
    TileBar,
    config_clash_error,
    execute_slide,
)
from zoomfeat.runtime.device import resolve_device
from zoomfeat.runtime.errors import ConfigMismatchError
from zoomfeat.slide.manifest import SlideSpec
from zoomfeat.slide.remote import SlideCache

__all__ = [
    "ConfigMismatchError",
    "DamagedOutputWarning",
    "Extractor",
    "SlideCancelled",
    "SlideHooks",
    "SlideIdentityError",
    "SlidePlan",
    "SlideResult",
    "extract_slide",
]


class Extractor:
    """Loads the models once and extracts slides with one configuration.

    >>> ex = Extractor(ExtractConfig.from_kwargs(model="tiny", encoder="tiny"))
    >>> result = ex.extract("slide.svs", "features/")      # a SlideResult

    Attributes:
        cfg: the configuration; device: the resolved device; models: :class:`FeatureModels`.
        pass_: the :class:`~zoomfeat.features.families.ExtractionPass` the slides' steps take
            (config, device, models, families, grid settings).
        families: ``{family: Family}`` of the pass (:mod:`zoomfeat.features.families`), each with
            its recipe dict (``spec``) and config hash (``hash``), stored in its bags.
        recipe, config_hash: the main family's (the default recipe ``zoomldm``; the first encoder
            family with ``zoomldm=false``).
        grid, grid_hash: the tiling settings and their hash (the coords files').
        timings: model and loader seconds of the last slide extracted (for benchmarks).
    """

    def __init__(self, config: ExtractConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            cfg = ExtractConfig.from_kwargs(**kwargs)
        else:
            cfg = config.replace(**kwargs) if kwargs else config
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.models = FeatureModels(cfg, self.device, cfg.recipes(), cfg.encoder_families())
        self.pass_ = ExtractionPass.build(cfg, device=self.device, models=self.models)
        self.families = self.pass_.families
        main = self.families[next(iter(self.families))]
        self.recipe, self.config_hash = main.spec, main.hash
        self.grid, self.grid_hash = self.pass_.grid, self.pass_.grid_hash
        self.timings: dict[str, float] = {}

    def close(self) -> None:
        """End the reader processes the slides shared (``num_workers``); a later slide starts them again."""
        self.pass_.close()

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- outputs
    def outputs(self, out_dir: str | Path, slide_id: str) -> dict[str, Path]:
        """Final paths of one slide's bags (every family's three sets) and two coords files."""
        return self.pass_.outputs(out_dir, slide_id)

    def plan(self, out_dir: str | Path, slide_id: str) -> SlidePlan:
        """A slide's :class:`SlidePlan`: one look at its existing outputs, family by family
        (:func:`~zoomfeat.features.families.plan_slide`)."""
        return self.pass_.plan(out_dir, slide_id)

    def plan_slides(self, slides: Sequence[SlideSpec], out_dir: str | Path) -> list[SlidePlan]:
        """Every slide's plan, in order (one look at the disk each); they are carried into the slides' runs."""
        return [self.pass_.plan(out_dir, s.slide_id, source=str(s.path)) for s in slides]

    def output_state(self, out_dir: str | Path, slide_id: str) -> tuple[str, str]:
        """("complete" | "absent" | "partial" | "damaged" | "mismatch", detail) of a slide's
        existing outputs, over every family of the pass; a mismatch names the families and keys."""
        plan = self.plan(out_dir, slide_id)
        return plan.state, plan.detail

    # ----------------------------------------------------------------------------- one slide
    def extract(
        self,
        slide_path: str | Path,
        out_dir: str | Path,
        mpp: float | None = None,
        *,
        plan: SlidePlan | None = None,
        hooks: SlideHooks | None = None,
    ) -> SlideResult:
        """Extract one slide into ``out_dir``; returns a :class:`SlideResult` (raises on errors).

        ``plan``: the slide's plan if made already (:meth:`plan_slides`); ``hooks``: observers
        (default: a tile progress bar when ``cfg.progress``).
        """
        if hooks is None and self.cfg.progress:
            hooks = TileBar().hooks()
        job = SlideExtraction(self.pass_, slide_path, out_dir, mpp=mpp, plan=plan, hooks=hooks)
        try:
            return job.run()
        finally:
            self.timings = job.timings

    def run_slide(
        self,
        spec: SlideSpec,
        out_dir: str | Path,
        *,
        plan: SlidePlan | None = None,
        hooks: SlideHooks | None = None,
        cache: SlideCache | None = None,
    ) -> SlideResult:
        """One slide of a run (:func:`~zoomfeat.features.slide_extraction.execute_slide`): a failure
        of the slide is a ``failed`` :class:`SlideResult`, not an exception. ``cache``: where a
        remote slide is staged (``cache_dir``)."""
        result = execute_slide(self.pass_, spec, out_dir, plan=plan, hooks=hooks, cache=cache)
        self.timings = dict(result.timings)
        return result


def refuse_config_clashes(plans: Sequence[SlidePlan], out_dir: str | Path) -> None:
    """Raise the run's :class:`ConfigMismatchError` when a slide has bags of another config.

    Raises:
        ConfigMismatchError: naming up to five slides and what differs.
    """
    err = config_clash_error(plans, out_dir)
    if err is not None:
        raise err


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
