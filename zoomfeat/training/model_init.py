"""The model training starts from: a seeded random init, or weights (``init=``) of the right architecture.

``init`` (or ``model.checkpoint``) may be an official ``weights.ckpt``, a pretrained directory or a
model-hub id; whatever it holds must be the architecture of the ``model`` section, else a clear
:class:`~zoomfeat.runtime.errors.WeightsError` shows both. The model's (frozen) VQ must be the one
that encoded the training data (:func:`align_vq`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoomfeat.model.config import ModelSection
from zoomfeat.runtime.errors import ShardError, WeightsError
from zoomfeat.training.shards import ShardIndex
from zoomfeat.training.vq import vq_fingerprint

if TYPE_CHECKING:
    from zoomfeat.model.zoomldm import ZoomLDM


log = logging.getLogger("zoomfeat.train")

#: architecture keys shown in a mismatch message
_SUMMARY_KEYS = (
    "model_channels",
    "channel_mult",
    "context_dim",
    "input_channels",
    "hidden_channels",
    "num_layers",
    "n_embed",
    "ch",
)


def _as_section(model: ModelSection | str | Mapping[str, Any]) -> ModelSection:
    if isinstance(model, ModelSection):
        return model
    if isinstance(model, str):
        return ModelSection(name=model)
    return ModelSection(**{k: v for k, v in dict(model).items() if k in ModelSection.__dataclass_fields__})


def architecture(model: ZoomLDM) -> dict[str, Any]:
    """The (normalised) architecture of a model: ``model.config`` (unet, vq, summarizer, diffusion)."""
    return dict(getattr(model, "config", {}) or {})


def expected_architecture(model: ModelSection | str) -> dict[str, Any]:
    """Normalised architecture of a model section (or config name), without building it."""
    from zoomfeat.model import read_config

    return read_config(_as_section(model).source())[1]


def _arch_summary(arch: Mapping[str, Any]) -> str:
    def find(d: Any, key: str) -> Any:
        if isinstance(d, Mapping):
            if key in d:
                return d[key]
            for v in d.values():
                r = find(v, key)
                if r is not None:
                    return r
        return None

    parts = [f"{k}={find(arch, k)}" for k in _SUMMARY_KEYS if find(arch, k) is not None]
    return ", ".join(parts) or json.dumps(arch, sort_keys=True, default=str)[:300]


def check_architecture(model: ZoomLDM, section: ModelSection | str, source: str) -> None:
    """A clear :class:`WeightsError` when ``model`` (loaded from ``source``) is not ``section``'s architecture."""
    section = _as_section(section)
    want = expected_architecture(section)
    got = architecture(model)
    if json.dumps(got, sort_keys=True, default=str) != json.dumps(want, sort_keys=True, default=str):
        raise WeightsError(
            f"init checkpoint {source} has another architecture than model={section.name}: "
            f"checkpoint [{_arch_summary(got)}] vs model={section.name} [{_arch_summary(want)}]. "
            f"Pick the model config that matches the checkpoint (e.g. model=tiny) or another init."
        )


def load_init(init: str, section: ModelSection | str) -> ZoomLDM:
    """A model to start training from: official ``.ckpt`` (config beside it, or the section's),
    pretrained directory, or hub id; the architecture must be the section's.

    Raises:
        WeightsNotFoundError: nothing at ``init``. WeightsError: unreadable or another architecture.
    """
    from zoomfeat.model import ZoomLDM

    section = _as_section(section)
    try:
        model = ZoomLDM.load(init, config=section.source())
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, RuntimeError) as err:
        raise WeightsError(f"init checkpoint {init} cannot be loaded as model={section.name}: {err}") from err
    check_architecture(model, section, str(init))
    return model


def build_model(section: ModelSection, init: str | None, seed: int) -> ZoomLDM:
    """``load_init(init)`` when given, else the section's architecture with a seeded random init."""
    from zoomfeat.model import ZoomLDM

    if init:
        return load_init(str(init), section)
    return ZoomLDM.from_config(section.source(), seed=seed)


def align_vq(model: ZoomLDM, index: ShardIndex, section: ModelSection, init: str | None) -> None:
    """Make sure the model's (frozen) VQ is the one that encoded the data.

    The shards' latents only mean something to the VQ that made them: sample grids decode with
    it and feature extraction encodes with it. Training from scratch (no ``init``) takes the VQ
    weights from the checkpoint ``prepare`` used (``dataset.json``'s ``vq_checkpoint``); any other
    mismatch is a :class:`ShardError` saying which checkpoint to pass.
    """
    from zoomfeat.model import ZoomLDM

    want = index.info.get("vq")
    if not want:
        return
    have = vq_fingerprint(model)
    if have == want:
        return
    source = str(index.info.get("vq_checkpoint") or "")
    loadable = source and not source.startswith("random-init") and (Path(source).exists() or "/" in source)
    if not init and loadable:
        donor = ZoomLDM.load(source, config=section.source())
        model.vq.load_state_dict(donor.vq.state_dict())
        if vq_fingerprint(model) == want:
            log.info(
                "VQ autoencoder taken from %s (the checkpoint the training data was prepared with)", source
            )
            return
    raise ShardError(
        f"the training data in {index.data_dir} was encoded with another VQ autoencoder (weights hash {want}, "
        f"from {source or 'unknown'}) than the model being trained ({have}, from {getattr(model, 'checkpoint_id', '?')}). "
        "Pass init= the checkpoint prepare used (model.checkpoint=... at prepare time), or prepare the data with this model."
    )
