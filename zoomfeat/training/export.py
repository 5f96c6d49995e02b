"""Export a training checkpoint to the released (official) layout, and load one for use.

The official ``weights.ckpt`` holds the live UNet under ``model.diffusion_model.*`` and its EMA
copy under ``model_ema.*``; sampling (and zoomfeat's feature extraction) uses the EMA copy. The
trainer's checkpoints keep both (the EMA UNet in the pretrained directory, the live UNet in
``trainer/unet_live.safetensors``), so an export carries both exactly, with the EMA bookkeeping
(decay, number of updates).
"""

from __future__ import annotations

from pathlib import Path

from zoomfeat.runtime import checkpoints as ckpt_io
from zoomfeat.runtime.errors import ConfigError


def load_checkpoint_model(checkpoint: str | Path, weights: str = "ema"):
    """A trained model from a checkpoint dir / run dir / ``latest``: ``weights="ema"`` (what
    sampling and extraction use; same as ``ZoomLDM.from_pretrained(step_dir)``) or ``"live"``."""
    from safetensors.torch import load_file

    from zoomfeat.model import ZoomLDM

    path = ckpt_io.resolve_checkpoint(checkpoint)
    model = ZoomLDM.from_pretrained(str(path))
    if weights == "live":
        model.unet.load_state_dict(load_file(str(path / "trainer" / "unet_live.safetensors")))
        model.checkpoint_hash += ":live"
    elif weights != "ema":
        raise ConfigError(f"weights must be 'ema' or 'live', got {weights!r}")
    return model


def export_official(checkpoint: str | Path, out_path: str | Path) -> Path:
    """Write ``out_path`` (official flat state_dict, ``torch.save``) + ``config.yaml`` beside it.

    ``ZoomLDM.from_official(out_path)`` then gives the EMA model (== ``from_pretrained`` of the
    checkpoint) and ``from_official(out_path, ema=False)`` the live one, exactly.
    """
    from safetensors.torch import load_file

    from zoomfeat.model import ZoomLDM

    path = ckpt_io.resolve_checkpoint(checkpoint)
    state = ckpt_io.read_state(path)
    model = ZoomLDM.from_pretrained(str(path))
    ema = {k: v.clone() for k, v in model.unet.state_dict().items()}
    model.unet.load_state_dict(load_file(str(path / "trainer" / "unet_live.safetensors")))
    ema_info = state.get("ema", {})
    return model.save_official(
        out_path,
        ema_unet_state=ema,
        ema_decay=float(ema_info.get("decay", 0.9999)),
        ema_num_updates=int(ema_info.get("num_updates", state.get("step", 0))),
    )
