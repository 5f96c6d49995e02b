"""ZoomLDM (CVPR 2025) for zoomfeat: VQ-f4 + conditional UNet (diffusers) + SSL summarizer + schedule.

``from zoomfeat.model import ZoomLDM``; see :class:`ZoomLDM` for the API and docs/ARCHITECTURE.md,
"Model", for the maths. Modules:

- ``zoomldm``: the model and its forward passes; ``pretrained``: constructors, loading, saving,
  the model hub; ``config``: the architecture dict in both YAML formats; ``official``: the
  released checkpoint layout (these three replace the former ``checkpoint`` module);
- ``unet``, ``vq``, ``summarizer``, ``schedule``, ``sampling``: the parts.
"""

from zoomfeat.model.config import ModelSection, read_config
from zoomfeat.model.official import to_official_state_dict
from zoomfeat.model.pretrained import CheckpointError
from zoomfeat.model.zoomldm import DEFAULT_TAPS, ZoomLDM
from zoomfeat.runtime.errors import WeightsError, WeightsNotFoundError

__all__ = [
    "ZoomLDM",
    "CheckpointError",
    "WeightsError",
    "WeightsNotFoundError",
    "DEFAULT_TAPS",
    "ModelSection",
    "read_config",
    "to_official_state_dict",
]
