"""zoomfeat.slide.grid: the nested 20x/5x grid on the real slide and on synthetic pyramids."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from zoomfeat.runtime.errors import SlideError
from zoomfeat.slide import Slide, TileGrid, split_parent
from zoomfeat.slide.grid import lattice_step, trident_level0_magnification
from zoomfeat.slide.synthetic import synthetic_artefact_image, write_synthetic_slide


@pytest.fixture(scope="module")
def cmu(cmu_slide):
    return Slide.open(cmu_slide)


@pytest.fixture(scope="module")
def cmu_grid(cmu):
    return TileGrid.build(cmu, tile_px=256, mag=20, parent_mag=5, min_tissue=0.25)


def _snap(v):
    return np.floor(np.asarray(v, np.float64) + 0.5).astype(np.int64)


def test_cmu_grid_geometry(cmu, cmu_grid):
    g = cmu_grid
    s = 256 * 0.5 / 0.499
    assert g.child_size_level0 == pytest.approx(s) and g.parent_size_level0 == pytest.approx(4 * s)
    assert g.patch_size_level0 == 257 and g.parent_patch_size_level0 == 1026  # round(256.513), round(1026.05)
    assert g.target_mpp == 0.5 and g.tile_px == 256
    P = len(g.parents)
    assert P >= 4 and g.parents.dtype == np.int64 and g.parents.shape == (P, 2)
    ch = g.children
    assert ch.xy.shape == (16 * P, 2) and ch.xy.dtype == np.int64
    np.testing.assert_array_equal(ch.parent, np.repeat(np.arange(P), 16))
    assert ch.tissue.dtype == np.float32 and ch.kept.dtype == bool
    # coordinates are the rounded lattice lines: x = floor(i*s + 0.5) for an integer i
    i = np.round(ch.xy / s).astype(np.int64)
    np.testing.assert_array_equal(ch.xy, _snap(i * s))
    ij = np.round(g.parents / (4 * s)).astype(np.int64)
    np.testing.assert_array_equal(g.parents, _snap(ij * 4 * s))
    # layout: row k is (dx, dy) = (k%16 % 4, k%16 // 4) inside parent k // 16
    k = np.arange(16 * P)
    np.testing.assert_array_equal(i[:, 0], 4 * ij[ch.parent, 0] + k % 16 % 4)
    np.testing.assert_array_equal(i[:, 1], 4 * ij[ch.parent, 1] + k % 16 // 4)
    # the integer boxes of the 16 children tile their parent's integer box exactly
    for p in range(P):
        xs = np.unique(ch.xy[16 * p : 16 * p + 16, 0])
        ys = np.unique(ch.xy[16 * p : 16 * p + 16, 1])
        assert xs[0] == g.parents[p, 0] and ys[0] == g.parents[p, 1]
        widths = np.diff(np.append(xs, _snap((4 * ij[p, 0] + 4) * s)))
        assert widths.sum() == _snap((4 * ij[p, 0] + 4) * s) - g.parents[p, 0]
        assert set(widths) <= {256, 257} and set(np.diff(ys)) <= {256, 257}
    # every kept child lies inside its parent (integer boxes and exact boxes)
    kept = np.flatnonzero(ch.kept)
    px = g.parents[ch.parent[kept]]
    assert (ch.xy[kept] >= px).all() and (ch.xy[kept] + 256 <= px + g.parent_patch_size_level0).all()
    for kk in kept:
        cx, cy, cs = g.child_box_level0(int(kk))
        bx, by, bs = g.parent_box_level0(int(ch.parent[kk]))
        assert bx <= cx and cx + cs <= bx + bs + 1e-6 and by <= cy and cy + cs <= by + bs + 1e-6
        assert abs(cx - ch.xy[kk, 0]) <= 0.5 and abs(cy - ch.xy[kk, 1]) <= 0.5
    # selection rules
    np.testing.assert_array_equal(ch.kept, (ch.tissue >= 0.25) & (ch.xy[:, 0] < 2220) & (ch.xy[:, 1] < 2967))
    assert ch.kept.reshape(P, 16).any(axis=1).all()  # no parent without a kept child
    # TRIDENT coords attributes for the bag writer
    attrs = g.coords_attrs(cmu)
    assert attrs["patch_size_level0"] == 257 and attrs["level0_magnification"] == pytest.approx(
        20.04, abs=0.01
    )
    assert g.coords_attrs(cmu, "parent")["target_magnification"] == 5 and attrs["level0_width"] == 2220


def test_cmu_grid_keeps_tissue_tiles(cmu, cmu_grid):
    g, ch = cmu_grid, cmu_grid.children
    n_slide = int(np.ceil(2220 / g.child_size_level0) * np.ceil(2967 / g.child_size_level0))
    assert 0.25 < ch.kept.sum() / n_slide < 0.65  # about a third of the field is tissue
    # what the pixels say: kept tiles are stained, dropped tiles of kept parents mostly glass
    stained = []
    for k in range(len(ch)):
        t = g.read_child(cmu, k).astype(np.float32)
        sat = (t.max(2) - t.min(2)) / np.maximum(t.max(2), 1)
        stained.append((sat > 0.2).mean())
    stained = np.array(stained)
    assert np.median(stained[ch.kept]) > 0.3
    assert (stained[ch.kept] > 0.08).mean() > 0.95
    assert np.median(stained[~ch.kept]) < 0.05
    assert np.corrcoef(stained, ch.tissue)[0, 1] > 0.8


def test_cmu_parent_read_gives_children_and_5x_tile(cmu, cmu_grid):
    g = cmu_grid
    for p in (0, len(g.parents) - 1):
        region = g.read_parent(cmu, p)
        assert region.shape == (1024, 1024, 3) and region.dtype == np.uint8
        children, parent_tile = split_parent(region)
        assert children.shape == (16, 256, 256, 3) and parent_tile.shape == (256, 256, 3)
        for r in range(16):
            direct = g.read_child(cmu, 16 * p + r).astype(int)
            diff = np.abs(children[r].astype(int) - direct)
            assert diff.max() <= 2 and diff.mean() < 0.05, (p, r, diff.max(), diff.mean())
        # the 5x tile matches a direct read at 2 um/px (Lanczos of Lanczos vs one Lanczos)
        x, y, _ = g.parent_box_level0(p)
        direct5 = cmu.read_region(x, y, 256, 2.0).astype(int)
        assert np.abs(parent_tile.astype(int) - direct5).mean() < 0.5


def test_split_parent_order_and_antialiased_downsample():
    rng = np.random.default_rng(0)
    region = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    children, parent = split_parent(region)
    assert children.shape == (16, 8, 8, 3) and parent.shape == (8, 8, 3)
    for k in range(16):
        dx, dy = k % 4, k // 4
        np.testing.assert_array_equal(children[k], region[dy * 8 : dy * 8 + 8, dx * 8 : dx * 8 + 8])
    # antialiased: a one-pixel checkerboard becomes flat grey (a plain subsample would stay 0 or 255)
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    _, small = split_parent(np.repeat(board[..., None], 3, axis=2))
    assert np.abs(small[2:-2, 2:-2].astype(int) - 128).max() <= 3
    with pytest.raises(ValueError):
        split_parent(region[:30, :30])
    # no 5x tile asked for: the same children, a white parent tile (no downsample)
    same, white = split_parent(region, parent_tile=False)
    np.testing.assert_array_equal(same, children)
    assert white.shape == (8, 8, 3) and (white == 255).all()


def test_40x_pyramid_grid_is_integer_and_reads_from_level_1(synthetic_slide_factory):
    path = synthetic_slide_factory("grid40", width=3000, height=2500, mpp=0.25, levels=4, tissue_fraction=0.5)
    slide = Slide.open(path)
    g = TileGrid.build(slide)
    assert g.child_size_level0 == 512.0 and g.patch_size_level0 == 512 and g.parent_patch_size_level0 == 2048
    assert len(g.parents) > 0 and (g.parents % 2048 == 0).all() and (g.children.xy % 512 == 0).all()
    region = g.read_parent(slide, 0)
    children, _ = split_parent(region)
    for r in (0, 5, 15):
        np.testing.assert_array_equal(children[r], g.read_child(slide, r))
    # the pickled grid still reads the same region through a pickled slide
    g2, s2 = pickle.loads(pickle.dumps((g, slide)))
    np.testing.assert_array_equal(g2.read_parent(s2, 0), region)


def test_edge_tiles_are_padded_white(tmp_path):
    # tissue everywhere, slide 1300x1100 at 0.5 um/px: parents of 1024 px reach past the edge
    img = np.full((1100, 1300, 3), (225, 160, 200), np.uint8)
    path = write_synthetic_slide(tmp_path / "edge.svs", image=img, mpp=0.5, levels=2)
    slide = Slide.open(path)
    g = TileGrid.build(slide, min_tissue=0.25)
    assert len(g.parents) == 4  # 2 x 2 parents
    right = int(np.flatnonzero((g.parents[:, 0] == 1024) & (g.parents[:, 1] == 1024))[0])
    region = g.read_parent(slide, right)
    assert (region[:, 1300 - 1024 + 3 :] == 255).all() and (region[1100 - 1024 + 3 :, :] == 255).all()
    assert np.abs(region[:70, :270].astype(int) - (225, 160, 200)).max() < 12
    ch = g.children
    rows = ch.parent == right
    # child (dx=1, dy=0) spans x 1280..1536: 20 of 256 px inside -> tissue 0.08, not kept
    k = np.flatnonzero(rows & (ch.xy[:, 0] == 1280) & (ch.xy[:, 1] == 1024))[0]
    assert ch.tissue[k] == pytest.approx(20 / 256 * 76 / 256, abs=0.03) and not ch.kept[k]
    assert ch.kept[np.flatnonzero(rows & (ch.xy[:, 0] == 1024) & (ch.xy[:, 1] == 1024))[0]]
    # everything-inside min_tissue=0 keeps every child overlapping the slide, nothing outside
    g0 = TileGrid.build(slide, min_tissue=0.0, tissue=g.tissue_mask)
    assert g0.children.kept.sum() == 6 * 5


def test_slide_smaller_than_a_tile_gives_an_empty_grid(synthetic_slide_factory):
    path = synthetic_slide_factory("tiny", width=200, height=150, mpp=0.5, levels=1, tissue_fraction=0.9)
    slide = Slide.open(path)
    with pytest.warns(UserWarning, match=r"tiny\.svs.*smaller than one 20x tile"):
        g = TileGrid.build(slide)
    assert g.parents.shape == (0, 2) and g.children.xy.shape == (0, 2) and len(g.children) == 0
    assert g.children.kept.dtype == bool and g.children.tissue.dtype == np.float32


def test_slide_without_tissue_gives_an_empty_grid_and_a_warning(tmp_path):
    rng = np.random.default_rng(0)
    white = np.clip(244 + rng.normal(0, 2, size=(1500, 1500, 3)), 0, 255).astype(np.uint8)
    path = write_synthetic_slide(tmp_path / "blank.svs", image=white, mpp=0.5, levels=2)
    slide = Slide.open(path)
    with pytest.warns(UserWarning, match=r"blank\.svs.*no tissue"):
        g = TileGrid.build(slide)
    assert len(g.parents) == 0 and len(g.children) == 0 and not g.mask.any()
    g.save_overlay(slide, tmp_path / "blank.png")  # still draws


def test_artefacts_get_no_tiles_and_overlay_shows_the_grid(tmp_path):
    img, truth = synthetic_artefact_image(2048, 2048, seed=5)
    path = write_synthetic_slide(tmp_path / "artefacts.svs", image=img, mpp=0.5, levels=3)
    slide = Slide.open(path)
    g = TileGrid.build(slide)
    assert g.n_kept_children > 0
    for k in np.flatnonzero(g.children.kept):
        x, y = g.children.xy[k]
        box = (slice(y, y + 256), slice(x, x + 256))
        assert truth["tissue"][box].mean() > 0.1, (x, y)
        assert truth["black"][box].mean() < 0.5 and truth["grey"][box].mean() < 0.5
    out = g.save_overlay(slide, tmp_path / "overlay.png", max_px=1024)
    over = np.asarray(Image.open(out).convert("RGB"))
    assert over.shape == (1024, 1024, 3)
    blue = (over[..., 2] > 200) & (over[..., 0] < 60) & (over[..., 1] < 90)  # parent outlines
    x0, y0 = (g.parents[0] / 2).astype(int)
    assert blue[y0 + 20 : y0 + 500, x0 : x0 + 2].mean() > 0.9


def test_low_magnification_slide_is_upsampled_with_a_warning(synthetic_slide_factory):
    path = synthetic_slide_factory("tenx", width=1200, height=1000, mpp=1.0, levels=2, tissue_fraction=0.6)
    slide = Slide.open(path)
    assert slide.magnification == pytest.approx(10.0)
    with pytest.warns(UserWarning, match=r"tenx\.svs.*coarser than the requested 20x"):
        g = TileGrid.build(slide)
    assert g.child_size_level0 == 128.0 and g.patch_size_level0 == 128 and len(g.parents) > 0
    assert g.read_parent(slide, 0).shape == (1024, 1024, 3)


def test_build_validates_arguments(cmu):
    with pytest.raises(ValueError, match="mag / parent_mag"):
        TileGrid.build(cmu, mag=20, parent_mag=10)
    with pytest.raises(ValueError, match="tile_px"):
        TileGrid.build(cmu, tile_px=0)


# ------------------------------------------------------------------------- the integer lattice (issue 10)
#: TCGA-typical scan resolutions where the exact lattice's coords are not multiples of round(s)
LATTICE_MPPS = (0.2425, 0.2520, 0.2527, 0.499, 0.504)


def _trident_read_size(attrs) -> int:
    """TRIDENT's patcher (WSIPatcher.__init__): round(patch_size * (10/target_mag) / (10/level0_mag))."""
    downsample = (10 / attrs["target_magnification"]) / (10 / attrs["level0_magnification"])
    return round(attrs["patch_size"] * downsample)


def _check_integer_lattice(slide, g, p):
    ch = g.children
    assert g.lattice == "integer" and g.child_size_level0 == p
    assert g.patch_size_level0 == p and g.parent_patch_size_level0 == 4 * p
    assert len(g.parents) > 0 and g.n_kept_children > 0
    assert (ch.xy % p == 0).all() and (g.parents % (4 * p) == 0).all()
    # the 5x tile nests its 4x4 children exactly: child k = parent + (dx, dy) * p
    k = np.arange(len(ch))
    offset = np.stack([k % 16 % 4, k % 16 // 4], axis=1) * p
    np.testing.assert_array_equal(ch.xy, g.parents[ch.parent] + offset)
    # readers that grid by coords // patch_size_level0 find one cell per tile
    assert len(np.unique(ch.xy // p, axis=0)) == len(ch)
    s = 256 * 0.5 / slide.mpp
    for which, size in (("child", p), ("parent", 4 * p)):
        attrs = g.coords_attrs(slide, which)
        assert attrs["patch_size_level0"] == size and attrs["patch_size_level0_exact"] == size
        assert _trident_read_size(attrs) == size  # TRIDENT re-reads exactly these boxes
        assert attrs["scale_error"] == pytest.approx(p / s - 1, abs=1e-12)
        assert abs(attrs["scale_error"]) <= 0.5 / s + 1e-12  # |p - s| <= 0.5: about 0.5 / p
        assert attrs["tile_mpp"] == pytest.approx(size * slide.mpp / 256) and attrs["lattice"] == "integer"
    assert g.target_mpp == pytest.approx(p * slide.mpp / 256)


@pytest.mark.parametrize("mpp", LATTICE_MPPS)
def test_integer_lattice_coords_are_multiples_of_patch_size_level0(synthetic_slide_factory, mpp):
    path = synthetic_slide_factory(
        f"lattice{mpp}", width=2700, height=1400, mpp=mpp, levels=1, tissue_fraction=0.7
    )
    slide = Slide.open(path)
    g = TileGrid.build(slide, lattice="integer", progress=False)
    _check_integer_lattice(slide, g, round(128 / mpp))
    # the exact lattice's lines floor(i s + 0.5) at these resolutions are not multiples of round(s)
    # (at 20x or 5x) within 200 tiles: what made readers misgrid before the integer lattice
    exact = lattice_step(mpp, lattice="exact")
    i = np.arange(200)
    assert any(((np.floor(i * size + 0.5) % round(size)) != 0).any() for size in (exact, 4 * exact))


def test_integer_lattice_on_the_cmu_slide_reads_its_boxes(cmu):
    g = TileGrid.build(cmu, lattice="integer", min_tissue=0.25, progress=False)
    _check_integer_lattice(cmu, g, 257)
    assert g.coords_attrs(cmu)["level0_magnification"] == 20 * 257 / 256  # 20.078125
    assert g.n_kept_children == 47  # the exact lattice keeps 48: its boxes are up to 0.5 px/tile smaller
    region = g.read_parent(cmu, 0)
    children, _ = split_parent(region)
    assert region.shape == (1024, 1024, 3)
    direct = g.read_child(cmu, 5).astype(int)
    assert np.abs(children[5].astype(int) - direct).mean() < 0.05


def test_trident_lattice_matches_tridents_tiles(cmu, synthetic_slide_factory):
    g = TileGrid.build(cmu, lattice="trident", progress=False)
    assert (g.patch_size_level0, g.parent_patch_size_level0) == (256, 1024)
    attrs = g.coords_attrs(cmu, "parent")
    assert attrs["level0_magnification"] == 20.0 and _trident_read_size(attrs) == 1024
    assert (g.children.xy % 256 == 0).all() and g.scale_error == pytest.approx(256 / (128 / 0.499) - 1)
    path = synthetic_slide_factory(
        "lattice0.2425", width=2700, height=1400, mpp=0.2425, levels=1, tissue_fraction=0.7
    )
    g40 = TileGrid.build(Slide.open(path), lattice="trident", progress=False)
    assert (g40.patch_size_level0, g40.parent_patch_size_level0) == (512, 2048)
    assert g40.coords_attrs(Slide.open(path))["level0_magnification"] == 40.0
    assert [trident_level0_magnification(m) for m in (0.12, 0.18, 0.25, 0.5, 1.0, 2.0)] == [
        80,
        60,
        40,
        20,
        10,
        5,
    ]
    with pytest.raises(SlideError, match="TRIDENT"):
        trident_level0_magnification(3.0)
    with pytest.raises(ValueError, match="lattice must be one of"):
        lattice_step(0.5, lattice="round")
