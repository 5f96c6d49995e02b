"""Call counts and FLOPs of a generation request (``dry_run``), and the live call tracker.

docs/generation.md, "Costs". Symbols: N = e^2 tiles, S = t0/stride steps, K inner
iterations, W = (4e - 3)^2 large-decode windows (window 16 latent px), P = t0_post/stride_post
post-processing steps; one guided ``model_pred`` is 2 UNet sample-evaluations (1 when w = 0).

    joint model_pred calls      S (1 + N (1 + 2K))         [C] loop structure ("Joint multi-scale sampling")
    joint UNet evaluations      2 x the above
    joint VQ decodes            S (1 + N K)
    joint VQ encodes            S N 2K
    large decode                W decodes
    post-processing             2 P W UNet evals, W summarizer calls, W more decodes
    super-resolution sampling   S N (1 + 2K) model_pred, S N K decodes, S N 2K encodes  [I] ("Super-resolution")
    inversion                   I UNet forward + backward (~3 UNet evals each), 1 encode
    patch (PLMS S)              (S + 1) x B UNet calls on 2B (cfg), 1 decode per sample   [R]
    patch (DDIM S)              S x 2B
    CDM                         R DiT calls (R = respaced steps, 200 by default)       [R]

FLOPs per sample-evaluation of the full-size model ([G], measured by the golden harness):
UNet 210.6 GF, VQ decode (256 px) 670.8 GF, VQ encode 345.2 GF; DiT-B 11.4 GF per sample
([I], "CDM"); the summarizer (12 layers, width 512, 65 tokens) ~5 GF ([I], 2 x params x tokens).
They describe the released (full-size) architecture; for any other model the FLOPs are reported as
the full-size figures scaled by nothing -- the counts are exact, the FLOPs are the full model's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: GFLOPs per sample of the full-size model ([G]; DiT-B and summarizer [I])
GFLOPS = {"unet": 210.6, "vq_decode": 670.8, "vq_encode": 345.2, "dit_b": 11.4, "summarizer": 5.0}


@dataclass
class Counts:
    """Model evaluations, per sample (a UNet call on a batch of 2B counts 2B)."""

    unet: int = 0
    unet_backward: int = 0
    vq_decode: int = 0
    vq_encode: int = 0
    summarizer: int = 0
    dit: int = 0
    model_pred: int = 0  # guided calls (each 2 UNet evals with CFG)

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})

    def flops(self) -> float:
        """FLOPs with the full-size per-sample figures (a backward counts as 2 forwards)."""
        g = GFLOPS
        return 1e9 * (
            g["unet"] * (self.unet + 2 * self.unet_backward)
            + g["vq_decode"] * self.vq_decode
            + g["vq_encode"] * self.vq_encode
            + g["summarizer"] * self.summarizer
            + g["dit_b"] * self.dit
        )


def n_windows(h_latent: int, w_latent: int, window: int = 64, stride: int = 16) -> int:
    """Sliding windows of the large decode and post-processing: ((H-64)/16 + 1)((W-64)/16 + 1)."""
    return ((h_latent - window) // stride + 1) * ((w_latent - window) // stride + 1)


def joint_counts(e: int, steps: int, k: int, guidance: float = 2.0) -> Counts:
    n = e * e
    calls = steps * (1 + n * (1 + 2 * k))
    per = 1 if guidance == 0 else 2
    return Counts(
        unet=per * calls,
        model_pred=calls,
        vq_decode=steps * (1 + n * k),
        vq_encode=steps * n * 2 * k,
        summarizer=n + 1,
    )


def large_decode_counts(e: int, window_stride: int = 16) -> Counts:
    return Counts(vq_decode=n_windows(64 * e, 64 * e, 64, window_stride))


def post_counts(e: int, steps: int, guidance: float = 2.0, window_stride: int = 16) -> Counts:
    w = n_windows(64 * e, 64 * e, 64, window_stride)
    per = 1 if guidance == 0 else 2
    return Counts(unet=per * steps * w, model_pred=steps * w, summarizer=w)


def superres_counts(e: int, *, steps: int, k: int, inversion_steps: int, guidance: float = 2.0) -> Counts:
    n = e * e
    calls = steps * n * (1 + 2 * k)
    per = 1 if guidance == 0 else 2
    return Counts(
        unet=per * calls + inversion_steps,
        unet_backward=inversion_steps,
        model_pred=calls,
        vq_decode=steps * n * k,
        vq_encode=steps * n * 2 * k + 1,
        summarizer=inversion_steps + n,
    )


def patch_counts(batch: int, steps: int, sampler: str = "plms", guidance: float = 2.0) -> Counts:
    per = batch if guidance == 1.0 else 2 * batch
    calls = steps + 1 if sampler == "plms" else steps
    return Counts(unet=per * calls, vq_decode=batch, summarizer=batch)


def cdm_counts(batch: int, respacing: int) -> Counts:
    return Counts(dit=batch * respacing)


@dataclass
class Tracker:
    """Counts model evaluations as they happen and drives a progress bar of UNet evals left.

    ``total`` is the planned number of UNet evaluations (from the formulas above); the bar shows
    how many remain. The counts are what the tests compare with the formulas.
    """

    total: int | None = None
    desc: str = "UNet evals"
    progress: bool = False
    counts: Counts = field(default_factory=Counts)
    _bar: Any = None  # a tqdm bar when ``progress``

    def __post_init__(self):
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="eval", dynamic_ncols=True)

    def unet(self, n: int, backward: bool = False) -> None:
        self.counts.unet += n
        if backward:
            self.counts.unet_backward += n
        if self._bar is not None:
            self._bar.update(n)

    def guided(self, n: int = 1) -> None:
        self.counts.model_pred += n

    def decode(self, n: int) -> None:
        self.counts.vq_decode += n

    def encode(self, n: int) -> None:
        self.counts.vq_encode += n

    def summarizer(self, n: int) -> None:
        self.counts.summarizer += n

    def dit(self, n: int) -> None:
        self.counts.dit += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def fmt_counts(name: str, c: Counts) -> str:
    """One report line: counts and FLOPs."""
    return (
        f"{name}: UNet evals {c.unet:,} (model_pred {c.model_pred:,}, backward {c.unet_backward:,}), "
        f"VQ decodes {c.vq_decode:,}, VQ encodes {c.vq_encode:,}, summarizer {c.summarizer:,}, "
        f"DiT {c.dit:,}; FLOPs {c.flops():.3g}"
    )
