"""The generation workflow behind ``python -m zoomfeat.generate``: plan (dry run) and run a request.

Takes the :class:`~zoomfeat.generation.config.GenerateConfig` dataclass, never Hydra objects.
``plan`` gives the per-stage call counts from the cost formulas (``costs.py``) without building
anything; ``generate`` loads the models once (EMA weights; live weights only where a parity
option asks), runs the mode, and writes PNGs, a pyramidal TIFF for large images and a JSON
summary (all atomically).

Stopping (SIGTERM, Ctrl-C, SIGUSR1; docs/long-runs.md): ``python -m zoomfeat.generate`` runs
:func:`generate` under :func:`zoomfeat.runtime.stopping.run_stoppable`, and every sampler and the
large decode get a step hook (:func:`zoomfeat.runtime.stopping.step_check`) that ends the request
at the end of the step in hand: its images are not written (each file is written whole or not at
all), the one line says how far it got, and the same command generates it again (same seed, same
images). A request is one unit: the patches of one batch, or one large image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoomfeat.generation import costs
from zoomfeat.generation.config import GenerateConfig
from zoomfeat.generation.large import GUIDE_MAGS
from zoomfeat.generation.latent_steps import Noise
from zoomfeat.model.callbacks import StepCallback
from zoomfeat.runtime.errors import ConfigError, InputError
from zoomfeat.runtime.units import MagIndex, mag_index, mag_name


def _cdm_mag(gc: GenerateConfig) -> MagIndex:
    if gc.cdm.mag is None:
        return gc.region.index()
    try:
        return mag_index(float(str(gc.cdm.mag).lower().rstrip("x")))
    except ValueError as err:
        raise ConfigError(f"cdm.mag={gc.cdm.mag!r}: {err}") from None


def _grid_side(gc: GenerateConfig) -> int:
    m = gc.region.index()
    if gc.mode == "large" and m not in GUIDE_MAGS:
        raise ConfigError(f"mode=large needs region.mag in 10x, 5x, 2.5x, 1.25x; got {gc.region.mag}")
    if gc.mode == "superres" and m not in (1, 2, 3):
        raise ConfigError(
            f"mode=superres needs region.mag in 10x, 5x, 2.5x (the summarizer sees <= 8x8); got {gc.region.mag}"
        )
    return 2**m


def plan(gc: GenerateConfig) -> list[tuple[str, costs.Counts]]:
    """Per-stage counts of the request (docs/generation.md, "Costs")."""
    stages: list[tuple[str, costs.Counts]] = []
    if gc.mode == "cdm_train":
        n = gc.cdm_train.steps * gc.cdm_train.batch_size
        return [
            (
                f"CDM training ({gc.cdm_train.steps} steps x {gc.cdm_train.batch_size})",
                costs.Counts(dit=n, summarizer=n),
            )
        ]
    if gc.mode == "patch":
        p = gc.patch
        if p.source == "cdm":
            stages.append(
                (f"CDM ({gc.cdm.respacing} DDIM steps)", costs.cdm_counts(p.count, gc.cdm.respacing))
            )
            c = costs.patch_counts(p.count, p.steps, p.sampler, gc.cdm.guidance)
            c.summarizer = 0
        else:
            c = costs.patch_counts(p.count, p.steps, p.sampler, p.guidance)
            c.summarizer = 1  # one context, repeated
        stages.append((f"patch sampling ({p.sampler} {p.steps})", c))
        return stages
    e = _grid_side(gc)
    if gc.mode == "large":
        lg = gc.large
        stages.append(
            (
                f"joint sampling (e={e}, S={lg.t0 // lg.stride}, K={lg.n_steps})",
                costs.joint_counts(e, lg.t0 // lg.stride, lg.n_steps, lg.guidance),
            )
        )
    else:
        sr = gc.superres
        stages.append(
            (
                f"super-resolution (inversion {sr.inversion_steps}, S={sr.t0 // sr.stride}, K={sr.n_steps})",
                costs.superres_counts(
                    e,
                    steps=sr.t0 // sr.stride,
                    k=sr.n_steps,
                    inversion_steps=sr.inversion_steps,
                    guidance=sr.guidance,
                ),
            )
        )
    ws = gc.large.decode_window_stride
    if gc.large.postprocess:
        stages.append(
            (
                f"seam post-processing (t0={gc.post.t0})",
                costs.post_counts(e, gc.post.t0 // gc.post.stride, gc.post.guidance, 16),
            )
        )
        stages.append(("large decode (after post-processing)", costs.large_decode_counts(e, ws)))
        stages.insert(1, ("large decode (before post-processing)", costs.large_decode_counts(e, ws)))
    else:
        stages.append(("large decode", costs.large_decode_counts(e, ws)))
    if gc.mode == "large":
        stages.append(("generated guide image", costs.Counts(vq_decode=1)))
    return stages


def dry_run_report(gc: GenerateConfig) -> tuple[str, costs.Counts]:
    stages = plan(gc)
    total = costs.Counts()
    lines = [f"zoomfeat generate dry run: mode={gc.mode} region.mag={gc.region.mag}"]
    if gc.mode != "patch":
        e = _grid_side(gc)
        lines[0] += f" -> {256 * e}x{256 * e} px at 20x ({e * e} tiles)"
    for name, c in stages:
        lines.append("  " + costs.fmt_counts(name, c))
        total = total + c
    lines.append("  " + costs.fmt_counts("total", total))
    lines.append(
        "  (FLOPs use the full-size model's per-sample figures: UNet 210.6 GF, VQ decode 670.8 GF, "
        "VQ encode 345.2 GF, summarizer ~5 GF, DiT-B 11.4 GF)"
    )
    return "\n".join(lines), total


# ----------------------------------------------------------------------------------------------
# running


def _save_png(path: Path, img: np.ndarray) -> Path:
    from PIL import Image

    from zoomfeat.runtime.atomic import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path


def load_ldm(gc: GenerateConfig, device: torch.device, live: bool = False):
    """The ZoomLDM of ``gc.model`` on ``device`` (EMA UNet unless ``live``)."""
    return _load_models(gc, device, live)


def _load_models(gc: GenerateConfig, device: torch.device, live: bool = False):
    from zoomfeat.model import ZoomLDM

    return (
        ZoomLDM.load(
            gc.model.checkpoint,
            config=gc.model.source(),
            allow_random_weights=gc.allow_random_weights,
            seed=gc.seed,
            ema=not live,
        )
        .to(device)
        .eval()
    )


def _encoder(gc: GenerateConfig, device: torch.device):
    from zoomfeat.encoders import build_encoder

    return build_encoder(
        gc.encoder.name, gc.encoder.checkpoint, allow_random_weights=gc.allow_random_weights, seed=gc.seed
    ).to(device)


def _slide_path(gc: GenerateConfig) -> str | None:
    if gc.slide:
        return gc.slide
    return gc.inputs[0] if gc.inputs else None


def _open_slide(gc: GenerateConfig):
    from zoomfeat.slide import Slide

    path = _slide_path(gc)
    if path is None:
        raise InputError("no slide given: pass a slide path as a bare argument (or slide=...)")
    return Slide.open(path)


def generate(gc: GenerateConfig) -> dict[str, Any]:
    """Run one request; returns a summary (paths written, counts, settings)."""
    from zoomfeat.runtime.atomic import atomic_write_text, ensure_dir
    from zoomfeat.runtime.device import autocast, resolve_device, resolve_precision
    from zoomfeat.runtime.stopping import step_check

    if gc.dry_run:
        text, total = dry_run_report(gc)
        print(text)
        return {"dry_run": True, "counts": total.__dict__, "flops": total.flops()}
    if gc.mode not in ("patch", "large", "superres"):
        raise ConfigError(
            f"mode={gc.mode}: generate() runs patch, large or superres (cdm_train: zoomfeat.generate)"
        )
    device = resolve_device(gc.device)
    precision = resolve_precision(gc.precision, device)
    out = ensure_dir(gc.out_dir)
    stages = plan(gc)
    planned = sum(c.unet for _, c in stages) + sum(c.dit for _, c in stages)
    tracker = costs.Tracker(total=planned, progress=gc.progress, desc=f"{gc.mode}: model evals")
    # the step hook of every sampler: a stop signal ends the request at the end of the step in hand
    stop = step_check(lambda where: _stopped(gc, out=out, where=where))
    gen = torch.Generator().manual_seed(int(gc.seed))
    noise = Noise(gen, device)
    model = _load_models(gc, device)
    stop()  # a signal while the weights loaded: no sampling started
    written: dict[str, str] = {}
    stem = gc.name
    try:
        with autocast(device, precision):
            if gc.mode == "patch":
                slide_path = _slide_path(gc) if gc.patch.source == "slide" else None
                stem = stem or (Path(slide_path).stem if slide_path else "cdm") + "_patch"
                written.update(
                    _run_patch(
                        gc, model, device=device, gen=gen, tracker=tracker, out=out, stem=stem, callback=stop
                    )
                )
            elif gc.mode == "large":
                stem = stem or Path(_slide_path(gc) or "large").stem + "_large"
                written.update(
                    _run_large(
                        gc,
                        model,
                        device=device,
                        noise=noise,
                        tracker=tracker,
                        out=out,
                        stem=stem,
                        callback=stop,
                    )
                )
            else:
                stem = stem or Path(gc.superres.image or _slide_path(gc) or "superres").stem + "_superres"
                written.update(
                    _run_superres(
                        gc,
                        model,
                        device=device,
                        noise=noise,
                        tracker=tracker,
                        out=out,
                        stem=stem,
                        callback=stop,
                    )
                )
    finally:
        tracker.close()
    summary = {
        "mode": gc.mode,
        "outputs": written,
        "counts": tracker.counts.__dict__,
        "planned_counts": {n: c.__dict__ for n, c in stages},
        "model": getattr(model, "checkpoint_id", "?"),
        "seed": gc.seed,
        "note": "outputs of a tiny or random model show the machinery, not biology"
        if gc.model.name == "tiny"
        else "",
    }
    summary_path = out / f"{stem}.json"
    atomic_write_text(summary_path, json.dumps(summary, indent=2, default=str))
    written["summary"] = str(summary_path)
    return summary


def _stopped(gc: GenerateConfig, *, out: Path, where: str) -> str:
    """The stop line's message: how far the request got, what is kept, how to resume."""
    return (
        f"mode={gc.mode}: the request was abandoned {where}; none of its generated images was written "
        f"(files already in {out} are kept); rerun the same command to generate them again (the same seed "
        "gives the same images)"
    )


def _run_patch(
    gc: GenerateConfig,
    model: Any,
    *,
    device: torch.device,
    gen: torch.Generator,
    tracker: costs.Tracker,
    out: Path,
    stem: str,
    callback: StepCallback | None = None,
) -> dict[str, str]:
    from zoomfeat.generation.patch import (
        Region,
        condition_region,
        reference_patch,
        region_ssl_grid,
        sample_patches,
    )

    p = gc.patch
    written = {}
    if p.source == "cdm":
        from zoomfeat.generation.cdm import load_cdm
        from zoomfeat.generation.cdm_training import cdm_weights_file, sample_contexts

        if not gc.cdm.checkpoint:
            raise ConfigError(
                "patch.source=cdm needs cdm.checkpoint (a DiT state_dict, bare or under 'ema', or a cdm_train run)"
            )
        weights = cdm_weights_file(gc.cdm.checkpoint)
        cdm = load_cdm(weights, gc.cdm.variant, in_channels=model.context_dim).to(device)
        mag = _cdm_mag(gc)
        ctx = sample_contexts(
            cdm,
            mag=mag,
            n=p.count,
            respacing=gc.cdm.respacing,
            generator=gen,
            tracker=tracker,
            callback=callback,
        )
        guidance = gc.cdm.guidance
    else:
        slide = _open_slide(gc)
        m = gc.region.index()
        region = Region(gc.region.x0, gc.region.y0, 2**m)
        grid, _ = region_ssl_grid(slide, region, _encoder(gc, device))
        ctx = condition_region(model, grid, m, tracker).expand(p.count, -1, -1)
        written["reference"] = str(
            _save_png(out / f"{stem}_reference_{mag_name(m)}.png", reference_patch(slide, region))
        )
        guidance = p.guidance
    x_T = torch.randn((p.count, model.latent_channels, model.latent_size, model.latent_size), generator=gen)
    _, imgs = sample_patches(
        model,
        ctx,
        steps=p.steps,
        guidance=guidance,
        sampler=p.sampler,
        x_T=x_T,
        tracker=tracker,
        callback=callback,
    )
    for i, img in enumerate(imgs):
        written[f"patch{i}"] = str(_save_png(out / f"{stem}_{i}.png", img))
    return written


def _save_large(gc, img: np.ndarray, out: Path, stem: str) -> dict[str, str]:
    from zoomfeat.generation.tiff import write_pyramidal_tiff

    written = {"png": str(_save_png(out / f"{stem}.png", img))}
    if gc.large.tiff:
        written["tiff"] = str(
            write_pyramidal_tiff(out / f"{stem}.tif", img, mpp=0.5, compression=gc.large.tiff_compression)
        )
    return written


def _post(
    gc: GenerateConfig,
    model: Any,
    *,
    device: torch.device,
    tiles: torch.Tensor,
    grid: torch.Tensor,
    noise: Noise,
    tracker: costs.Tracker,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    from zoomfeat.generation.postprocess import PostOptions, postprocess

    pm = _load_models(gc, device, live=True) if gc.post.live_weights else model
    po = PostOptions(
        t0=gc.post.t0,
        stride=gc.post.stride,
        guidance=gc.post.guidance,
        window_stride=16,
        batch_size=gc.post.batch_size,
        t_offset=gc.large.t_offset,
    )
    return postprocess(pm, tiles, grid, opts=po, noise=noise, tracker=tracker, callback=callback)


def _run_large(
    gc: GenerateConfig,
    model: Any,
    *,
    device: torch.device,
    noise: Noise,
    tracker: costs.Tracker,
    out: Path,
    stem: str,
    callback: StepCallback | None = None,
) -> dict[str, str]:
    from zoomfeat.generation.large import decode_large, joint_sample
    from zoomfeat.generation.latent_steps import decode, tiles_to_canvas, to_uint8
    from zoomfeat.generation.patch import Region, reference_patch, region_ssl_grid

    slide = _open_slide(gc)
    m = gc.region.index()
    e = _grid_side(gc)
    region = Region(gc.region.x0, gc.region.y0, e)
    grid, region_20x = region_ssl_grid(slide, region, _encoder(gc, device))
    lg = gc.large
    res = joint_sample(
        model,
        grid,
        guide_mag=m,
        opts=lg.joint_options(),
        noise=noise,
        ssl_norm=lg.ssl_norm,
        tracker=tracker,
        callback=callback,
    )
    tiles = res.tiles
    if lg.postprocess:
        tiles = _post(
            gc, model, device=device, tiles=tiles, grid=grid, noise=noise, tracker=tracker, callback=callback
        )
    img = decode_large(
        model,
        tiles_to_canvas(tiles, e),
        window_stride=lg.decode_window_stride,
        sigma=lg.decode_sigma,
        batch_size=lg.decode_batch_size,
        tracker=tracker,
        callback=callback,
    )[0]
    written = _save_large(gc, img, out, stem)
    written["guide_generated"] = str(
        _save_png(out / f"{stem}_guide_{mag_name(m)}.png", to_uint8(decode(model, res.guide, tracker))[0])
    )
    written["guide_reference"] = str(
        _save_png(out / f"{stem}_reference_{mag_name(m)}.png", reference_patch(slide, region))
    )
    written["reference_20x"] = str(_save_png(out / f"{stem}_reference_20x.png", region_20x))
    return written


def _load_image(path: str, size: int) -> np.ndarray:
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise InputError(f"superres.image={path}: no such file")
    try:
        img = np.asarray(Image.open(p).convert("RGB"))
    except Exception as err:  # noqa: BLE001 - PIL raises many types
        raise InputError(f"{path}: not a readable image ({err})") from None
    if img.shape[:2] != (size, size):
        raise InputError(
            f"{path}: the low-magnification image must be {size}x{size} px, got {img.shape[1]}x{img.shape[0]}"
        )
    return img


def _run_superres(
    gc: GenerateConfig,
    model: Any,
    *,
    device: torch.device,
    noise: Noise,
    tracker: costs.Tracker,
    out: Path,
    stem: str,
    callback: StepCallback | None = None,
) -> dict[str, str]:
    from zoomfeat.generation.large import JointOptions, decode_large
    from zoomfeat.generation.latent_steps import tiles_to_canvas
    from zoomfeat.generation.patch import Region, reference_patch
    from zoomfeat.generation.superres import (
        InversionOptions,
        constrained_superres,
        image_to_tensor,
        invert_condition,
    )

    m = gc.region.index()
    e = _grid_side(gc)
    sr = gc.superres
    written = {}
    if sr.image:
        lr_img = _load_image(sr.image, model.image_size)
    else:
        slide = _open_slide(gc)
        lr_img = reference_patch(slide, Region(gc.region.x0, gc.region.y0, e))
        written["input"] = str(_save_png(out / f"{stem}_input_{mag_name(m)}.png", lr_img))
    x = image_to_tensor(lr_img)
    inv_model = _load_models(gc, device, live=True) if sr.live_weights else model
    inv = invert_condition(
        inv_model,
        x,
        mag=m,
        opts=InversionOptions(steps=sr.inversion_steps, lr=sr.inversion_lr),
        noise=noise,
        tracker=tracker,
        callback=callback,
    )
    opts = JointOptions(
        t0=sr.t0,
        stride=sr.stride,
        n_steps=sr.n_steps,
        h=sr.h,
        lr=sr.lr,
        guidance=sr.guidance,
        batch_size=sr.batch_size,
        noise_term=gc.large.noise_term,
        t_offset=gc.large.t_offset,
    )
    tiles = constrained_superres(
        model, x, contexts=inv.contexts, opts=opts, noise=noise, tracker=tracker, callback=callback
    )
    if gc.large.postprocess:
        tiles = _post(
            gc, model, device=device, tiles=tiles, grid=inv.F, noise=noise, tracker=tracker, callback=callback
        )
    lg = gc.large
    img = decode_large(
        model,
        tiles_to_canvas(tiles, e),
        window_stride=lg.decode_window_stride,
        sigma=lg.decode_sigma,
        batch_size=lg.decode_batch_size,
        tracker=tracker,
        callback=callback,
    )[0]
    written.update(_save_large(gc, img, out, stem))
    return written
