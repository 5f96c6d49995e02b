"""ZoomLDM (CVPR 2025) for zoomfeat: VQ-f4 + conditional UNet (diffusers) + SSL summarizer + schedule.

``from zoomfeat.model import ZoomLDM``; see :class:`ZoomLDM` for the API.
"""

from zoomfeat.model.checkpoint import CheckpointError, WeightsNotFoundError, to_official_state_dict
from zoomfeat.model.zoomldm import DEFAULT_TAPS, ZoomLDM

__all__ = ["ZoomLDM", "CheckpointError", "WeightsNotFoundError", "DEFAULT_TAPS", "to_official_state_dict"]
