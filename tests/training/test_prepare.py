"""prepare over many slides: resume per slide and magnification, settings hash, models, errors."""

from __future__ import annotations

import pytest
import torch

from zoomfeat.runtime.errors import ConfigError, InputError, WeightsError
from zoomfeat.training.config import PrepareConfig
from zoomfeat.training.prepare import load_models, prepare
from zoomfeat.training.shards import ShardIndex, list_records, read_record


@pytest.fixture(scope="module")
def tiny():
    from zoomfeat.encoders import build_encoder
    from zoomfeat.model import ZoomLDM

    return ZoomLDM.from_config("tiny", seed=0), build_encoder("tiny", seed=0)


@pytest.fixture(scope="module")
def small_slide(synthetic_slide_factory):
    # 1024 x 1024 px at 0.5 um/px: 16 20x tiles, 4 10x tiles, one 5x tile
    return synthetic_slide_factory(
        "prep_small", width=1024, height=1024, mpp=0.5, levels=2, seed=3, tissue_fraction=0.5
    )


def _cfg(out, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 16)
    kw.setdefault("progress", False)
    return PrepareConfig(out_dir=str(out), **kw)


def test_resume_skips_done_slides_and_adds_magnifications(
    tmp_path, tiny, small_slide, synthetic_slide_factory
):
    model, encoder = tiny
    out = tmp_path / "data"
    prepare([small_slide], _cfg(out, mags=["5x"]), model, encoder)
    first = read_record(out, "prep_small")
    mtime = (out / "m2" / "prep_small.h5").stat().st_mtime_ns
    again = prepare([small_slide], _cfg(out, mags=["5x"]), model, encoder)
    assert again["skipped"] == ["prep_small"] and again["done"] == []
    # a new magnification computes only that one; the 5x shard is left as it was
    more = prepare([small_slide], _cfg(out, mags=["5x", "10x"]), model, encoder)
    assert more["done"] == ["prep_small"] and set(more["tiles"]) == {"10x"}
    rec = read_record(out, "prep_small")
    assert set(rec["mags"]) == {"1", "2"} and rec["mags"]["2"] == first["mags"]["2"]
    assert (out / "m2" / "prep_small.h5").stat().st_mtime_ns == mtime
    # other settings make the slide pending again; another encoder is refused for this directory
    other = prepare([small_slide], _cfg(out, mags=["5x"], min_tissue=0.3), model, encoder)
    assert other["done"] == ["prep_small"]
    from zoomfeat.encoders import build_encoder

    with pytest.raises(ValueError, match="prepared with other settings"):
        prepare([small_slide], _cfg(out, mags=["5x"]), model, build_encoder("tiny", seed=1))
    # a slide killed half-way (temporary shard, no record) is invisible and redone
    second = synthetic_slide_factory(
        "prep_second", width=1024, height=1024, mpp=0.5, levels=2, seed=4, tissue_fraction=0.5
    )
    (out / "m2" / ".prep_second.h5.tmp-999").write_bytes(b"partial")
    assert "prep_second" not in list_records(out)
    res = prepare([small_slide, second], _cfg(out, mags=["5x"], min_tissue=0.3), model, encoder)
    assert res["done"] == ["prep_second"] and res["skipped"] == ["prep_small"]
    assert ShardIndex.load(out).counts()[2] == 2


def test_no_slides_is_an_error(tmp_path, tiny):
    with pytest.raises(InputError, match="does not exist"):
        prepare([tmp_path / "missing.svs"], _cfg(tmp_path / "d"), *tiny)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no slides found"):
        prepare([tmp_path / "empty"], _cfg(tmp_path / "d"), *tiny)


def test_tiny_models_need_no_weights_full_size_ones_do(tmp_path):
    """Like extract: the tiny model and encoder get a seeded random init without
    allow_random_weights; full-size ones need weights (or the flag)."""
    from zoomfeat.model import ZoomLDM

    model, encoder = load_models(PrepareConfig(model="tiny", encoder="tiny", seed=0))
    ref = ZoomLDM.from_config("tiny", seed=0)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())
    assert encoder.embed_dim == 32
    with pytest.raises(WeightsError, match="(?s)could not get UNI weights.*allow_random_weights=true"):
        load_models(PrepareConfig(model="zoomldm_brca", encoder="uni"))
    with pytest.raises(ConfigError, match="encoder=tiny gives 32-d embeddings but model=zoomldm_brca"):
        load_models(PrepareConfig(model="zoomldm_brca", encoder="tiny"))
