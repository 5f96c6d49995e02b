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

import dataclasses
import itertools
import re
import warnings
from dataclasses import dataclass
from typing import Any

from zoomfeat.bags import SET_SUFFIX_MAG

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


# ------------------------------------------------------------------------------------------------
# From the configuration to recipes and bag families (the extraction plumbing's part of this module)
# ------------------------------------------------------------------------------------------------

#: the suffixes of a family's three bag sets (20x tile, 5x parent, concat(20x, its 5x parent))
SET_SUFFIXES = tuple(SET_SUFFIX_MAG)  # ("_20x", "_5x", "_fused")
#: the family name of the conditioning encoder's bags when ``encoders`` is not given (today's uni_*)
CONDITIONING_FAMILY = "uni"
#: the recipe fields a partial recipe (``features.recipes`` entry) or a sweep axis may set
RECIPE_FIELDS = ("timestep", "taps", "ensemble", "pooling", "cond_px")
#: what a family name may contain (it becomes a directory name: ``features_{name}_20x``)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._+-]+$")
#: the recipe keys that decide an *encoder* bag (its config hash): everything about the tiles,
#: nothing about ZoomLDM or the noise
ENCODER_RECIPE_KEYS = ("encoder", "encoder_checkpoint", "tile_px", "mag", "parent_mag", "min_tissue",
                       "mpp", "precision", "lattice")  # fmt: skip
#: the recipe keys that decide a coords file (the tile grid)
GRID_RECIPE_KEYS = ("tile_px", "mag", "parent_mag", "min_tissue", "mpp", "lattice")


def _settings(r: Recipe) -> tuple:
    return (int(r.timestep), tuple(r.taps), int(r.ensemble), str(r.pooling), int(r.cond_px))


def _make(fields: dict[str, Any], base: dict[str, Any], name: str | None, where: str) -> Recipe:
    """One :class:`Recipe` from a partial ``fields`` dict over ``base`` (the top-level features.*)."""
    from zoomfeat.runtime.errors import ConfigError

    unknown = sorted(set(fields) - set(RECIPE_FIELDS) - {"name"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown recipe key(s) {unknown}; a recipe sets name, {', '.join(RECIPE_FIELDS)}"
        )
    v = {**base, **{k: fields[k] for k in RECIPE_FIELDS if k in fields and fields[k] is not None}}
    taps = [v["taps"]] if isinstance(v["taps"], str) else list(v["taps"])
    try:
        r = Recipe(name="", timestep=int(v["timestep"]), taps=tuple(str(t) for t in taps),
                   ensemble=int(v["ensemble"]), pooling=str(v["pooling"]), cond_px=int(v["cond_px"]))  # fmt: skip
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
    problems = []
    if not taps:
        problems.append("taps must name at least one UNet block")
    if len(set(r.taps)) != len(r.taps):
        problems.append(f"taps has duplicates: {list(r.taps)}")
    if not 0 <= r.timestep < 1000:
        problems.append(f"timestep must lie in [0, 1000), got {r.timestep}")
    if r.ensemble < 1:
        problems.append(f"ensemble must be >= 1, got {r.ensemble}")
    if r.pooling not in POOLINGS:
        problems.append(f"pooling must be one of {', '.join(POOLINGS)}, got {r.pooling!r}")
    if r.cond_px not in COND_PX:
        problems.append(f"cond_px must be one of {', '.join(map(str, COND_PX))}, got {r.cond_px}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return dataclasses.replace(r, name=str(name) if name else r.auto_name())


def build_recipes(cfg: Any) -> list[Recipe]:
    """The ZoomLDM recipes a configuration extracts, in order: the default, ``features.recipes``, the sweep.

    The default recipe is the top-level ``features.*`` under ``features.name`` (``zoomldm``). Each
    ``features.recipes`` entry and each point of the Cartesian product of the non-empty
    ``features.sweep`` axes is a partial recipe whose unset fields are the top-level values; its
    name is the given one or :meth:`Recipe.auto_name`. A recipe with the same settings as an
    earlier one is that family (dropped); ``zoomldm=false`` extracts none.

    Args:
        cfg: an :class:`~zoomfeat.features.config.ExtractConfig`.

    Returns:
        The recipes, names unique.

    Raises:
        ConfigError: a bad value, an unsafe name, a name used twice with different settings, a
            name ending in a set suffix or equal to an encoder family.
    """
    from zoomfeat.runtime.errors import ConfigError

    f = cfg.features
    if not cfg.zoomldm:
        if f.recipes or any(vars(f.sweep).values()):
            raise ConfigError(
                "features.recipes / features.sweep need zoomldm=true (zoomldm=false extracts no recipe)"
            )
        return []
    base = {"timestep": f.timestep, "taps": list(f.taps), "ensemble": f.ensemble, "pooling": f.pooling,
            "cond_px": f.cond_px}  # fmt: skip
    out = [_make({}, base, f.name or DEFAULT_FAMILY, "features")]
    for i, entry in enumerate(f.recipes or []):
        if not isinstance(entry, dict):
            raise ConfigError(
                f"features.recipes[{i}]: expected a mapping like {{timestep: 50}}, got {entry!r}"
            )
        out.append(_make(entry, base, entry.get("name"), f"features.recipes[{i}]"))
    sweep = {k: list(v) for k, v in vars(f.sweep).items() if v}
    for point in itertools.product(*sweep.values()):
        fields = dict(zip(sweep, point))
        out.append(_make(fields, base, None, f"features.sweep {fields}"))
    families = set(encoder_families(cfg))
    recipes: list[Recipe] = []
    by_name: dict[str, Recipe] = {}
    for r in out:
        check_family_name(r.name, "recipe", families)
        same = next((q for q in recipes if _settings(r) == _settings(q)), None)
        if same is not None:  # the same family as an earlier recipe
            if r.name != same.name and r.name != r.auto_name():
                warnings.warn(
                    f"recipe {r.name!r} has the settings of recipe {same.name!r} ({_describe(r)}): "
                    f"extracted once, as {same.name!r}",
                    stacklevel=2,
                )
            continue
        if r.name in by_name:
            raise ConfigError(
                f"recipe name {r.name!r} is used for two different recipes ({_describe(by_name[r.name])} and "
                f"{_describe(r)}): give them different names"
            )
        by_name[r.name] = r
        recipes.append(r)
    return recipes


def _describe(r: Recipe) -> str:
    return f"timestep={r.timestep} taps={list(r.taps)} ensemble={r.ensemble} pooling={r.pooling} cond_px={r.cond_px}"


def check_family_name(name: str, what: str, encoder_families: Any = ()) -> None:
    """Refuse a family name that is no safe directory name, ends in a set suffix or is an encoder family.

    Raises:
        ConfigError: naming the rule broken.
    """
    from zoomfeat.runtime.errors import ConfigError

    if not NAME_PATTERN.match(name) or name in (".", ".."):
        raise ConfigError(f"{what} name {name!r} must be a plain name of letters, digits and . _ + -")
    if name.endswith(SET_SUFFIXES):
        raise ConfigError(
            f"{what} name {name!r} must not end in {', '.join(SET_SUFFIXES)} (its bags add them)"
        )
    if what == "recipe" and name in encoder_families:
        raise ConfigError(f"recipe name {name!r} is also an encoder's bag family: choose another name")


def encoder_families(cfg: Any) -> dict[str, str]:
    """``{bag family: encoder registry name}`` of the plain encoder bags a configuration writes.

    ``encoders: null`` gives today's one family ``uni`` from the conditioning encoder
    (``cfg.encoder.name``: UNI, or the tiny test encoder); a list gives one family per listed name.

    Raises:
        ConfigError: an unknown encoder name (the message lists the known ones), a name listed twice.
    """
    from zoomfeat.encoders.registry import ENCODERS
    from zoomfeat.runtime.errors import ConfigError

    if cfg.encoders is None:
        return {CONDITIONING_FAMILY: cfg.encoder.name}
    names = [cfg.encoders] if isinstance(cfg.encoders, str) else list(cfg.encoders)
    out: dict[str, str] = {}
    for name in names:
        name = str(name)
        if name not in ENCODERS:
            raise ConfigError(f"encoders: unknown encoder {name!r}: use one of {', '.join(ENCODERS)}")
        if name in out:
            raise ConfigError(f"encoders: {name!r} is listed twice")
        check_family_name(name, "encoder")
        out[name] = name
    return out


def family_sets(family: str) -> tuple[str, str, str]:
    """The three bag sets of a family: ``({family}_20x, {family}_5x, {family}_fused)``."""
    return tuple(family + s for s in SET_SUFFIXES)  # type: ignore[return-value]


def recipe_dict(base: dict[str, Any], r: Recipe) -> dict[str, Any]:
    """The recipe dict (config-hash input) of recipe ``r``'s family.

    ``base`` is :meth:`~zoomfeat.features.config.ExtractConfig.recipe` with the weights'
    identities; ``r``'s timestep, taps and ensemble replace its own, and ``pooling`` / ``cond_px``
    are added only when not the defaults (mean, 224), so the default recipe's dict, and hash, is
    exactly that of earlier versions.
    """
    d = {k: v for k, v in base.items() if k not in ("pooling", "cond_px")}
    d.update(timestep=int(r.timestep), taps=[str(t) for t in r.taps], ensemble=int(r.ensemble))
    if r.pooling != "mean":
        d["pooling"] = r.pooling
    if r.cond_px != 224:
        d["cond_px"] = int(r.cond_px)
    return d


def encoder_dict(base: dict[str, Any], encoder: str, identity: str | None) -> dict[str, Any]:
    """The recipe dict (config-hash input) of a plain encoder family: :data:`ENCODER_RECIPE_KEYS`.

    Args:
        base: :meth:`~zoomfeat.features.config.ExtractConfig.recipe`; encoder: the registry name;
        identity: the weights' identity (hash or id).
    """
    d = {k: base[k] for k in ENCODER_RECIPE_KEYS if k in base}
    d["encoder"], d["encoder_checkpoint"] = str(encoder), identity
    return d


def grid_dict(base: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a slide's tile grid (the coords files' ``grid_hash``)."""
    return {k: base[k] for k in GRID_RECIPE_KEYS if k in base}
