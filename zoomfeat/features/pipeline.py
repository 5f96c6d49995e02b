"""Tile batches -> multi-scale ZoomLDM and UNI features -> per-slide bags.

For one slide (see DESIGN.md, "Feature recipe"):

1. :class:`~zoomfeat.slide.TileGrid` finds the tissue and the kept 5x parents; DataLoader
   workers read each parent's 1024 px region at 20x once (:mod:`zoomfeat.features.data`),
   split it into 16 children + the 5x tile and draw their per-tile noise.
2. Stage A: UNI on all 17 tiles of every parent (background children too: the 5x grid needs
   them), in full batches of ``batch_size`` images.
3. Stage B, once a parent's 17 embeddings exist: for each kept child (20x, own 1x1 grid, mag 0)
   and the parent tile (5x, 4x4 children grid, mag 2): Summarizer context, VQ encode (pre-quant
   latent), ``q_sample`` at ``timestep`` with the tile's own noise, UNet forward up to the
   deepest tap, global average pooling of each tap, concatenation (averaged over ``ensemble``
   noise draws). Full batches of ``batch_size`` tiles.
4. As each parent completes (in order) its rows of the six bags are appended, fused rows being
   ``concat(f20_i, f5_parent(i))``; :class:`~zoomfeat.features.writer.SlideBagWriter`
   publishes the files atomically at the end.

Both queues are FIFO and every tile's inputs (pixels, grid, noise) depend only on the tile, so
features do not depend on batch size, worker count, order or shard (up to floating-point
rounding of the CPU kernels; see the tests for the measured bound).
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoomfeat.bags import FEATURE_SETS, read_attrs
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.data import CHILDREN, NoiseSpec, ParentRegions, parent_loader
from zoomfeat.features.locks import SlideLock
from zoomfeat.features.writer import SlideBagWriter, remove_stale_temporaries, slide_outputs
from zoomfeat.runtime.errors import ConfigMismatchError
from zoomfeat.runtime.provenance import canonical_json, config_hash

#: magnification indices of ZoomLDM's conditioning (0 = 20x, 2 = 5x)
MAG_INDEX = {20.0: 0, 10.0: 1, 5.0: 2, 2.5: 3, 1.25: 4}


@dataclass
class SlideResult:
    """What happened to one slide."""

    path: str
    slide_id: str
    status: str  # "done" | "skipped" | "locked" | "failed"
    n20: int = 0
    n5: int = 0
    seconds: float = 0.0
    error: str = ""
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def tiles(self) -> int:
        return self.n20 + self.n5

    def line(self) -> str:
        if self.status == "done":
            rate = self.tiles / self.seconds if self.seconds > 0 else float("nan")
            return f"{self.slide_id}: {self.n20} 20x + {self.n5} 5x tiles, {self.seconds:.1f} s, {rate:.2f} tiles/s"
        if self.status == "skipped":
            return f"{self.slide_id}: skipped ({self.error or 'complete bags with this config exist'})"
        if self.status == "locked":
            return f"{self.slide_id}: skipped (another process holds its lock)"
        return f"{self.slide_id}: FAILED: {self.error}"


# ---------------------------------------------------------------------------------------- models


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


_MODEL_CACHE: dict[tuple, tuple[Any, Any]] = {}


def load_models(cfg: ExtractConfig, device: torch.device) -> tuple[Any, Any]:
    """(ZoomLDM, encoder) in eval mode on ``device``; the last pair is cached per process."""
    key = (
        cfg.model,
        cfg.model_checkpoint,
        cfg.encoder,
        cfg.encoder_checkpoint,
        cfg.allow_random_weights,
        str(device),
        cfg.compile,
    )
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    _MODEL_CACHE.clear()
    from zoomfeat.encoders import EMBED_DIM, build_encoder
    from zoomfeat.model import ZoomLDM

    # The tiny configs exist for tests and the demo: a seeded random init is always fine there.
    model = ZoomLDM.load(
        cfg.model_checkpoint,
        config=cfg.model,
        allow_random_weights=cfg.allow_random_weights or cfg.model == "tiny",
        seed=0,
    )

    def check(embed_dim: int) -> None:
        if int(model.ssl_channels) != int(embed_dim):
            raise ValueError(
                f"model '{cfg.model}' is conditioned on {model.ssl_channels}-channel SSL grids but encoder "
                f"'{cfg.encoder}' gives {embed_dim}-d embeddings: use model=zoomldm_brca with encoder=uni, "
                "or model=tiny with encoder=tiny"
            )

    if cfg.encoder in EMBED_DIM:
        check(EMBED_DIM[cfg.encoder])  # before building a 300M-parameter encoder for nothing
    encoder = build_encoder(
        cfg.encoder, cfg.encoder_checkpoint, allow_random_weights=cfg.allow_random_weights
    )
    check(encoder.embed_dim)
    model = model.eval().requires_grad_(False).to(device)
    encoder = encoder.eval().requires_grad_(False).to(device)
    if device.type == "cuda":
        for m in (model.vq, model.unet):
            m.to(memory_format=torch.channels_last)
    if cfg.compile:
        for m in compile_targets(model, encoder):
            m.compile()
    _MODEL_CACHE[key] = (model, encoder)
    return model, encoder


def compile_targets(model, encoder) -> list[torch.nn.Module]:
    """The modules the pipeline actually calls, for ``torch.compile`` (``compile=true``).

    ``model.encode`` calls the VQ encoder (not ``VQModel.forward``) and ``model.taps`` runs the
    UNet block by block up to the deepest tap (not ``UNet2DConditionModel.forward``), so the
    blocks are compiled one by one.
    """
    unet = model.unet
    return [encoder, model.summarizer, model.vq.encoder, model.vq.quant_conv, unet.conv_in, unet.time_embedding,
            *unet.down_blocks, unet.mid_block, *unet.up_blocks]  # fmt: skip


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------- queue items


@dataclass
class _Piece:
    """A run of tiles of one parent waiting for a model: ``images`` (n, H, W, 3) uint8 on device."""

    parent: int
    start: int  # index of the first tile within its parent's list for this stage
    images: torch.Tensor
    mag: int = 0  # stage B: magnification index
    grids: torch.Tensor | None = None  # stage B: raw UNI grids (n, D, h, w)
    noise: torch.Tensor | None = None  # stage B: (n, draws, C, h, w)

    def __len__(self) -> int:
        return len(self.images)

    def split(self, n: int) -> tuple[_Piece, _Piece]:
        def cut(t, a, b):
            return None if t is None else t[a:b]

        head = _Piece(
            self.parent, self.start, self.images[:n], self.mag, cut(self.grids, 0, n), cut(self.noise, 0, n)
        )
        tail = _Piece(
            self.parent,
            self.start + n,
            self.images[n:],
            self.mag,
            cut(self.grids, n, None),
            cut(self.noise, n, None),
        )
        return head, tail


def _take(queue: deque, n: int) -> list[_Piece]:
    """Pop pieces totalling at most ``n`` tiles from the front of ``queue`` (splitting one if needed)."""
    out, total = [], 0
    while queue and total < n:
        piece = queue.popleft()
        if total + len(piece) > n:
            piece, rest = piece.split(n - total)
            queue.appendleft(rest)
        out.append(piece)
        total += len(piece)
    return out


def _queued(queue: deque) -> int:
    return sum(len(p) for p in queue)


@dataclass
class _ParentState:
    n_kept: int
    emb: torch.Tensor  # (17, D_uni): 16 children then the parent tile
    n_emb: int = 0
    f20: torch.Tensor | None = None  # (n_kept, D_zoom)
    n20: int = 0
    f5: torch.Tensor | None = None  # (D_zoom,)


class _RowBuffer:
    """Parents finish in order: gather their rows and write them in blocks."""

    def __init__(self, writer: SlideBagWriter, block_rows: int = 512) -> None:
        self.writer = writer
        self.block_rows = block_rows
        self.next = {20: 0, 5: 0}
        self.rows: dict[str, list[np.ndarray]] = {name: [] for name in FEATURE_SETS}
        self.pending = 0

    def add(self, f20z: np.ndarray, f5z: np.ndarray, f20u: np.ndarray, f5u: np.ndarray) -> None:
        n = len(f20z)
        rows = {
            "zoomldm_20x": f20z,
            "zoomldm_5x": f5z[None],
            "zoomldm_fused": np.concatenate([f20z, np.repeat(f5z[None], n, 0)], axis=1),
            "uni_20x": f20u,
            "uni_5x": f5u[None],
            "uni_fused": np.concatenate([f20u, np.repeat(f5u[None], n, 0)], axis=1),
        }
        for name, r in rows.items():
            self.rows[name].append(r)
        self.pending += n + 1
        if self.pending >= self.block_rows:
            self.flush()

    def flush(self) -> None:
        from zoomfeat.bags import FEATURE_SET_MAG

        starts = dict(self.next)
        for name, parts in self.rows.items():
            if not parts:
                continue
            block = np.concatenate(parts, axis=0)
            mag = FEATURE_SET_MAG[name]
            self.writer.write(name, starts[mag], block)
            self.next[mag] = starts[mag] + len(block)
            parts.clear()
        self.pending = 0


# ---------------------------------------------------------------------------------------- extractor


class Extractor:
    """Loads the models once and extracts slides with one configuration.

    >>> ex = Extractor(ExtractConfig(model="tiny", encoder="tiny"))
    >>> result = ex.extract("slide.svs", "features/")      # a SlideResult
    """

    def __init__(self, config: ExtractConfig | None = None, **kwargs: Any) -> None:
        cfg = config if config is not None else ExtractConfig.from_kwargs(**kwargs)
        if config is not None and kwargs:
            cfg = ExtractConfig.from_kwargs(**{**cfg.to_dict(), **kwargs})
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model, self.encoder = load_models(cfg, self.device)
        self.taps = list(cfg.taps)
        tap_dims = self.model.tap_channels(self.taps)  # validates the names without running
        self.tap_dims = {name: int(tap_dims[name]) for name in self.taps}
        dz, du = sum(self.tap_dims.values()), int(self.encoder.embed_dim)
        self.dims = {
            "zoomldm_20x": dz,
            "zoomldm_5x": dz,
            "zoomldm_fused": 2 * dz,
            "uni_20x": du,
            "uni_5x": du,
            "uni_fused": 2 * du,
        }
        down = self.model.image_size // self.model.latent_size  # VQ-f4
        self.latent_shape = (int(self.model.latent_channels), cfg.tile_px // down, cfg.tile_px // down)
        recipe = cfg.recipe()
        recipe["model_checkpoint"] = self.model.checkpoint_hash or self.model.checkpoint_id
        recipe["encoder_checkpoint"] = self.encoder.checkpoint_hash or self.encoder.checkpoint_id
        self.recipe = recipe
        self.config_hash = config_hash(recipe)
        self.mag_index = (self._mag_index(cfg.mag), self._mag_index(cfg.parent_mag))
        # model timings (seconds) of the last slide, for benchmarks
        self.timings: dict[str, float] = {}

    @staticmethod
    def _mag_index(mag: float) -> int:
        if float(mag) not in MAG_INDEX:
            raise ValueError(
                f"magnification {mag:g}x has no ZoomLDM conditioning index (have {sorted(MAG_INDEX, reverse=True)})"
            )
        return MAG_INDEX[float(mag)]

    # ----------------------------------------------------------------------------- model calls
    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """UNI (or tiny) embeddings of uint8 tiles (B, H, W, 3) on the device -> float32 (B, D)."""
        x = self.encoder.preprocess(images)
        with autocast_context(self.device, self.cfg.precision):
            return self.encoder(x).float()

    @torch.inference_mode()
    def zoomldm_features(
        self, images: torch.Tensor, contexts: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Pooled tap features (B, D) of uint8 tiles given contexts (B, 65, C) and noise (B, k, 3, h, w)."""
        # uint8 NHWC -> float NCHW in [-1, 1]. The layout matters on CPU: torch's channels_last
        # GroupNorm CPU kernel is inaccurate (errors up to ~0.3 on the VQ encoder's first
        # GroupNorm for tiles with background, and batch-size dependent), so the CPU path feeds
        # NCHW-contiguous tensors. CUDA's GroupNorm makes its input contiguous itself, so
        # channels_last there only speeds up the convolutions.
        x = images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        t = torch.full((len(x),), self.cfg.timestep, dtype=torch.long, device=self.device)
        with autocast_context(self.device, self.cfg.precision):
            z0 = self.model.encode(x).float()
            total = None
            for j in range(noise.shape[1]):
                x_t = self.model.q_sample(z0, t, noise[:, j].to(z0.dtype))
                taps = self.model.taps(x_t, t, contexts, self.taps)
                feat = torch.cat([taps[name].float().mean(dim=(2, 3)) for name in self.taps], dim=1)
                total = feat if total is None else total + feat
        return total / noise.shape[1]

    @torch.inference_mode()
    def contexts(self, grids: list[torch.Tensor], mags: list[int]) -> torch.Tensor:
        """Summarizer contexts for pieces of grids (one magnification per piece), one call per grid shape."""
        order = {}
        for i, (g, m) in enumerate(zip(grids, mags)):
            order.setdefault((tuple(g.shape[1:]), m), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(grids)
        with autocast_context(self.device, self.cfg.precision):
            for (_, mag), idx in order.items():
                ctx = self.model.condition(torch.cat([grids[i] for i in idx]), mag).float()
                pos = 0
                for i in idx:
                    out[i] = ctx[pos : pos + len(grids[i])]
                    pos += len(grids[i])
        return torch.cat(out)

    # ----------------------------------------------------------------------------- outputs
    def outputs(self, out_dir: str | Path, slide_id: str) -> dict[str, Path]:
        return slide_outputs(out_dir, slide_id, self.cfg.tile_px)

    def output_state(self, out_dir: str | Path, slide_id: str) -> tuple[str, str]:
        """("complete" | "absent" | "partial" | "mismatch", detail) of a slide's existing outputs."""
        paths = self.outputs(out_dir, slide_id)
        present, mismatched = 0, []
        for name, path in paths.items():
            if not path.is_file():
                continue
            try:
                attrs = read_attrs(path)
            except OSError:
                mismatched.append((name, {}))
                continue
            if attrs.get("config_hash") != self.config_hash:
                mismatched.append((name, attrs))
            elif attrs.get("complete"):
                present += 1
        if mismatched:
            return "mismatch", self._diff(mismatched[0][1])
        if present == len(paths):
            return "complete", ""
        return ("partial" if present else "absent"), ""

    def _diff(self, attrs: Mapping[str, Any]) -> str:
        try:
            old = json.loads(attrs.get("recipe", "{}"))
        except (TypeError, ValueError):
            old = {}
        if not old:
            return f"written by another tool or version (config hash {attrs.get('config_hash', 'none')} vs {self.config_hash})"
        keys = sorted(set(old) | set(self.recipe))
        diffs = [
            f"{k}: {old.get(k)!r} -> {self.recipe.get(k)!r}"
            for k in keys
            if canonical_json(old.get(k)) != canonical_json(self.recipe.get(k))
        ]
        return "; ".join(diffs) or f"config hash {attrs.get('config_hash')} vs {self.config_hash}"

    def check_reusable(self, out_dir: str | Path, slide_id: str) -> str:
        """The state of a slide's outputs (see :meth:`output_state`); raises
        :class:`ConfigMismatchError` when bags from another config exist (unless overwrite)."""
        state, detail = self.output_state(out_dir, slide_id)
        if state == "mismatch" and not self.cfg.overwrite:
            raise ConfigMismatchError(
                f"bags for slide '{slide_id}' in {out_dir} were written with a different config ({detail}); "
                "refusing to mix them: pass overwrite=true to recompute, or use another out_dir"
            )
        return state

    # ----------------------------------------------------------------------------- one slide
    def extract(self, slide_path: str | Path, out_dir: str | Path, mpp: float | None = None) -> SlideResult:
        """Extract one slide into ``out_dir``; returns a :class:`SlideResult` (raises on errors)."""
        from zoomfeat.slide import Slide

        cfg = self.cfg
        t0 = time.perf_counter()
        slide = Slide.open(slide_path, mpp=mpp if mpp is not None else cfg.mpp)
        sid = slide.slide_id
        result = SlideResult(str(slide_path), sid, "done")
        lock = SlideLock(out_dir, sid)
        try:
            # Complete bags with this very config are always reused (delete them to force a
            # recomputation); bags from another config are an error unless overwrite=true.
            if self.check_reusable(out_dir, sid) == "complete":
                result.status, result.paths = "skipped", self.outputs(out_dir, sid)
                return result
            if not lock.acquire():
                result.status = "locked"
                return result
            # another worker may have finished it while we were getting here
            if self.check_reusable(out_dir, sid) == "complete":
                result.status, result.paths = "skipped", self.outputs(out_dir, sid)
                return result
            remove_stale_temporaries(self.outputs(out_dir, sid))
            result.paths = self._extract_locked(slide, out_dir, result)
        finally:
            lock.release()
            slide.close()
        result.seconds = time.perf_counter() - t0
        return result

    def _attrs(self, slide, grid) -> dict[str, Any]:
        from zoomfeat.runtime.version import __version__

        cfg = self.cfg
        return {
            "zoomfeat_version": __version__,
            "config_hash": self.config_hash,
            "config": canonical_json({**cfg.to_dict(), "resolved_device": str(self.device)}),
            "recipe": canonical_json(self.recipe),
            "slide_id": slide.slide_id,
            "slide_path": str(slide.path),
            "mpp": float(slide.mpp),
            "level0_magnification": float(slide.magnification),
            "model": cfg.model,
            "model_checkpoint_id": str(self.model.checkpoint_id),
            "model_checkpoint_hash": str(self.model.checkpoint_hash or ""),
            "ssl_encoder": cfg.encoder,
            "encoder_checkpoint_id": str(self.encoder.checkpoint_id),
            "encoder_checkpoint_hash": str(self.encoder.checkpoint_hash or ""),
            "timestep": int(cfg.timestep),
            "taps": json.dumps(list(cfg.taps)),
            "tap_channels": json.dumps(self.tap_dims),
            "ensemble": int(cfg.ensemble),
            "seed": int(cfg.seed),
            "pooling": "global average per tap, concatenated in taps order",
            "precision": cfg.precision,
            "tile_px": int(cfg.tile_px),
            "min_tissue": float(cfg.min_tissue),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _set_attrs(self) -> dict[str, dict[str, Any]]:
        z, u = self.cfg.model, self.cfg.encoder
        dz, du = self.dims["zoomldm_20x"], self.dims["uni_20x"]
        fused = "concat(20x tile feature, its 5x parent's feature)"
        return {
            "zoomldm_20x": {
                "encoder": z,
                "target_magnification": 20,
                "description": "ZoomLDM 20x tile (own 1x1 UNI grid, mag 0)",
            },
            "zoomldm_5x": {
                "encoder": z,
                "target_magnification": 5,
                "description": "ZoomLDM 5x tile (4x4 children UNI grid, mag 2)",
            },
            "zoomldm_fused": {
                "encoder": z,
                "target_magnification": 20,
                "description": fused,
                "split": json.dumps([dz, dz]),
            },
            "uni_20x": {
                "encoder": u,
                "target_magnification": 20,
                "description": f"{u} class token of the 20x tile",
            },
            "uni_5x": {
                "encoder": u,
                "target_magnification": 5,
                "description": f"{u} class token of the 5x tile",
            },
            "uni_fused": {
                "encoder": u,
                "target_magnification": 20,
                "description": fused,
                "split": json.dumps([du, du]),
            },
        }

    def _extract_locked(self, slide, out_dir: str | Path, result: SlideResult) -> dict[str, Path]:
        from zoomfeat.slide import TileGrid

        cfg = self.cfg
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grid = TileGrid.build(
                slide,
                tile_px=cfg.tile_px,
                mag=cfg.mag,
                parent_mag=cfg.parent_mag,
                min_tissue=cfg.min_tissue,
                progress=False,
            )
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        kept = grid.children.kept
        P = len(grid.parents)
        result.n20, result.n5 = int(kept.sum()), P
        if P == 0:
            warnings.warn(f"{slide.path}: no tissue tiles; writing empty (0, D) bags", stacklevel=3)
        coords20 = grid.children.xy[kept]
        parent_idx = grid.children.parent[kept]
        writer = SlideBagWriter(
            out_dir,
            slide.slide_id,
            self.dims,
            coords20,
            grid.parents,
            grid.coords_attrs(slide, "child"),
            grid.coords_attrs(slide, "parent"),
            parent_idx,
            self._attrs(slide, grid),
            self._set_attrs(),
            tile_px=cfg.tile_px,
        )
        with writer:
            if P:
                self._run(slide, grid, writer)
            paths = writer.finish()
        if cfg.preview:
            from zoomfeat.features.preview import save_preview

            paths["preview"] = save_preview(
                slide, grid, paths, Path(out_dir) / "previews" / f"{slide.slide_id}.png"
            )
        return paths

    def _run(self, slide, grid, writer: SlideBagWriter) -> None:
        cfg, dev = self.cfg, self.device
        P = len(grid.parents)
        kept = grid.children.kept.reshape(P, CHILDREN)
        noise = NoiseSpec(cfg.seed, slide.slide_id, self.latent_shape, cfg.ensemble)
        loader = parent_loader(
            ParentRegions(slide, grid, noise), cfg.workers_for(dev.type), pin_memory=dev.type == "cuda"
        )
        bs = cfg.batch_size
        mag20, mag5 = self.mag_index
        qa: deque[_Piece] = deque()  # stage A: UNI
        qb: deque[_Piece] = deque()  # stage B: ZoomLDM
        states: dict[int, _ParentState] = {}
        rows = _RowBuffer(writer)
        next_parent = 0  # parents are written strictly in order
        timings = {"uni": 0.0, "zoomldm": 0.0, "wait": 0.0}
        self.timings = timings
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        def run_a(pieces: list[_Piece]) -> None:
            t = time.perf_counter()
            emb = self.embed(torch.cat([p.images for p in pieces]))
            sync()
            timings["uni"] += time.perf_counter() - t
            pos = 0
            for p in pieces:
                st = states[p.parent]
                st.emb[p.start : p.start + len(p)] = emb[pos : pos + len(p)]
                st.n_emb += len(p)
                pos += len(p)
                if st.n_emb == CHILDREN + 1:
                    enqueue_b(p.parent)

        def enqueue_b(i: int) -> None:
            st, item = states[i], items.pop(i)
            rows_i = np.flatnonzero(kept[i])
            if len(rows_i):
                g20 = st.emb[torch.as_tensor(rows_i, device=dev)][:, :, None, None]
                qb.append(
                    _Piece(
                        i,
                        0,
                        item["children"][torch.as_tensor(rows_i, device=dev)],
                        mag20,
                        g20,
                        item["noise20"],
                    )
                )
            g5 = st.emb[:CHILDREN].reshape(4, 4, -1).permute(2, 0, 1)[None]
            qb.append(_Piece(i, -1, item["parent"][None], mag5, g5, item["noise5"][None]))

        def run_b(pieces: list[_Piece]) -> None:
            nonlocal next_parent
            t = time.perf_counter()
            ctx = self.contexts([p.grids for p in pieces], [p.mag for p in pieces])
            feats = self.zoomldm_features(
                torch.cat([p.images for p in pieces]), ctx, torch.cat([p.noise for p in pieces])
            )
            sync()
            timings["zoomldm"] += time.perf_counter() - t
            pos = 0
            for p in pieces:
                st = states[p.parent]
                f = feats[pos : pos + len(p)]
                pos += len(p)
                if p.start < 0:
                    st.f5 = f[0]
                else:
                    if st.f20 is None:
                        st.f20 = torch.empty((st.n_kept, f.shape[1]), device=dev)
                    st.f20[p.start : p.start + len(p)] = f
                    st.n20 += len(p)
            while (
                next_parent in states
                and states[next_parent].f5 is not None
                and states[next_parent].n20 == states[next_parent].n_kept
            ):
                finish(next_parent)
                next_parent += 1

        def finish(i: int) -> None:
            st = states.pop(i)
            emb = st.emb.cpu().numpy()
            f20z = st.f20.cpu().numpy() if st.n_kept else np.zeros((0, self.dims["zoomldm_20x"]), np.float32)
            rows.add(f20z, st.f5.cpu().numpy(), emb[:CHILDREN][kept[i]], emb[CHILDREN])
            pbar.update(st.n_kept + 1)

        from tqdm.auto import tqdm

        items: dict[int, dict] = {}
        total = int(kept.sum()) + P
        with tqdm(
            total=total,
            desc=slide.slide_id,
            unit="tile",
            leave=False,
            position=1,
            **({} if cfg.progress else {"disable": True}),
        ) as pbar:
            it = iter(loader)
            while True:
                t = time.perf_counter()
                batch = next(it, None)
                timings["wait"] += time.perf_counter() - t
                if batch is not None:
                    i = int(batch["index"])
                    item = {
                        k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v)
                        for k, v in batch.items()
                    }
                    items[i] = item
                    states[i] = _ParentState(
                        int(kept[i].sum()), torch.empty((CHILDREN + 1, self.dims["uni_20x"]), device=dev)
                    )
                    qa.append(_Piece(i, 0, torch.cat([item["children"], item["parent"][None]])))
                # full batches while there are enough tiles; everything left once input ends
                while _queued(qa) >= bs or (batch is None and qa):
                    run_a(_take(qa, bs))
                while _queued(qb) >= bs or (batch is None and qb):
                    run_b(_take(qb, bs))
                if batch is None:
                    break
            rows.flush()
        if states or next_parent != P:
            raise RuntimeError(f"{slide.path}: internal error, {len(states)} parent(s) unfinished")


def extract_slide(
    path: str | Path, out_dir: str | Path, mpp: float | None = None, **config: Any
) -> dict[str, Path]:
    """Extract one slide; returns ``{feature_set | "patches_20x" | "patches_5x" [| "preview"]: path}``.

    ``config`` takes :class:`~zoomfeat.features.config.ExtractConfig` fields (``model="tiny"``,
    ``timestep=200``, ``taps=[...]``, ...; CLI-style ``features.timestep`` also works through
    ``**{"features.timestep": 200}``). Models are cached between calls with the same weights.
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
