"""Feature recipes: which UNet activations, at which noise level, pooled how (issue 12).

A *recipe* turns a tile's UNet activations into one feature vector:

    f_r = (1 / k) sum_{j < k} concat_{tap in taps} pool(tap(z_t^(j), t, c))     z_t^(j) = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps_j

with ``t`` the timestep, ``taps`` official UNet block names, ``k`` the ensemble size (the first
``k`` of the tile's noise draws, so a recipe's features do not depend on which other recipes run
with it), ``pool`` one of :data:`POOLINGS` and ``c`` the Summarizer context of UNI embeddings
taken at ``cond_px`` px (224: UNI's model card, a resize of the 256 px tile; 256: the native tile;
which one ZoomLDM's training used is not published).

Several recipes are extracted in one pass: slide reading, tissue, UNI and the VQ encoding are
shared; the UNet runs once per distinct ``(timestep, cond_px)`` and noise draw, up to the deepest
tap any recipe of that group needs (:func:`forward_groups`). Each recipe is a bag *family*:
``{name}_20x``, ``{name}_5x`` and ``{name}_fused``. The default recipe is named ``zoomldm``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: pooling of one tap's (C, h, w) activation -> its output width is ``POOL_WIDTH[p] * C``
#: mean: global average (DIFT/DDAE-style global descriptors); max: global max; meanmax: both,
#: concatenated (mean first); grid2: the means of the 2x2 spatial quadrants, row-major (a coarse
#: spatial layout, as regional pooling in Diffusion Hyperfeatures' aggregation of feature maps).
POOLINGS = ("mean", "max", "meanmax", "grid2")
POOL_WIDTH = {"mean": 1, "max": 1, "meanmax": 2, "grid2": 4}

#: the conditioning encoder's input sizes a recipe may ask for
COND_PX = (224, 256)

#: the family name of the default recipe (today's bag names)
DEFAULT_FAMILY = "zoomldm"


def tap_abbrev(tap: str) -> str:
    """Short form of an official block name for derived family names.

    ``middle_block`` -> ``mid``, ``output_blocks.4`` -> ``out4``, ``input_blocks.3`` -> ``in3``;
    other names lose their dots and underscores.
    """
    if tap == "middle_block":
        return "mid"
    for prefix, short in (("output_blocks.", "out"), ("input_blocks.", "in")):
        if tap.startswith(prefix):
            return short + tap[len(prefix) :]
    return tap.replace(".", "").replace("_", "")


@dataclass(frozen=True)
class Recipe:
    """One feature recipe (see the module header).

    Attributes:
        name: the bag family (``{name}_20x`` ...); ``zoomldm`` for the default recipe.
        timestep: t in [0, 1000). taps: official UNet block names, concatenated in this order.
        ensemble: k >= 1 noise draws averaged. pooling: one of :data:`POOLINGS`.
        cond_px: the conditioning encoder's input size, one of :data:`COND_PX`.
    """

    name: str
    timestep: int
    taps: tuple[str, ...]
    ensemble: int = 1
    pooling: str = "mean"
    cond_px: int = 224

    def auto_name(self) -> str:
        """The family name derived from the settings: ``zoomldm-t{t}-{taps}[-{pooling}][-e{k}][-c{px}]``.

        Only non-default pooling, ensemble and cond_px appear, e.g. ``zoomldm-t50-out2``,
        ``zoomldm-t200-mid-out4-meanmax``.
        """
        parts = [DEFAULT_FAMILY, f"t{self.timestep}", *(tap_abbrev(t) for t in self.taps)]
        if self.pooling != "mean":
            parts.append(self.pooling)
        if self.ensemble != 1:
            parts.append(f"e{self.ensemble}")
        if self.cond_px != 224:
            parts.append(f"c{self.cond_px}")
        return "-".join(parts)

    def width(self, tap_channels: dict[str, int]) -> int:
        """Feature width D_r = POOL_WIDTH[pooling] * sum of the taps' channels."""
        return POOL_WIDTH[self.pooling] * sum(int(tap_channels[t]) for t in self.taps)


def forward_groups(recipes: list[Recipe]) -> dict[tuple[int, int], list[Recipe]]:
    """Recipes grouped by what one UNet forward serves: ``{(timestep, cond_px): [recipes]}``.

    Each group needs ``max(ensemble)`` forwards (one per noise draw), each up to the deepest tap
    of any recipe in the group. Groups keep the order of first appearance.
    """
    groups: dict[tuple[int, int], list[Recipe]] = {}
    for r in recipes:
        groups.setdefault((int(r.timestep), int(r.cond_px)), []).append(r)
    return groups
