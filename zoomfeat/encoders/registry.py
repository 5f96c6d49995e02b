"""The encoder registry: every tile encoder zoomfeat can build, with its published recipe.

One :class:`EncoderSpec` per encoder holds what is needed to rebuild the published model and
feed it as its authors do: the ``timm`` architecture and keyword arguments, the input size and
resize, the normalisation, the output rule, the published parameter count (with its source),
the output width, GFLOPs per tile, where the weights come from, the licence gate and the
key-layout converter when the published checkpoint is not in ``timm``'s layout.

Sources of the constants (each row names its own):

- TRIDENT ``trident/patch_encoder_models/load.py`` (mahmoodlab/TRIDENT, 2025), which builds these
  encoders from their model cards: ``timm`` names and kwargs, transforms, output rules;
- the model cards / ``config.json`` on the Hugging Face hub (named per row);
- ``timm`` 1.0 ``vision_transformer.py`` for the base definitions the kwargs override
  (``vit_giant_patch14_dinov2`` brings SwiGLUPacked + SiLU + LayerScale 1e-5 with it).

GFLOPs per tile are counted here (``torch.utils.flop_counter`` on the meta device, 2 FLOPs per
multiply-add, one tile at ``input_px``); ``tests/encoders/test_registry.py`` recounts them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: H-optimus-0/1 normalisation (bioptimus model cards; TRIDENT ``HOptimus0InferenceEncoder``)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

#: output rules (``EncoderSpec.output``)
OUTPUTS = {
    "cls": "class token after the final norm",
    "cls+mean": "class token concatenated with the mean of the patch tokens (register tokens excluded)",
    "avg": "mean over the final feature map after the final norm (Swin)",
    "attn_pool": "attentional pooler (1 query) + LayerNorm on all tokens (CONCH vision tower)",
}


@dataclass(frozen=True)
class EncoderSpec:
    """The published recipe of one tile encoder."""

    name: str
    #: who published it, how it was trained
    title: str
    #: architecture in words (ViT-L/16, Swin-T ...)
    architecture: str
    #: ``timm`` model name the kwargs override ("" for the tiny test encoder)
    timm_model: str
    #: ``timm`` kwargs as published (JSON-able; ``mlp_layer``/``act_layer``/``norm_eps`` are
    #: spelled as strings and turned into classes by :func:`zoomfeat.encoders.build.timm_kwargs`)
    timm_kwargs: dict[str, Any]
    #: side of the square the network sees
    input_px: int
    #: a tile is resized (shorter side) to this many px, then centre-cropped to ``input_px``
    resize_px: int
    #: resize interpolation of the published transform (``bilinear`` | ``bicubic``)
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: key of :data:`OUTPUTS`
    output: str
    #: width of the embedding ``forward`` returns
    embed_dim: int
    #: published parameter count as published ("632M", "1.1B"): its rounding is the tolerance
    published_params: str
    #: where that count is published
    params_source: str
    #: GFLOPs per tile at ``input_px`` (counted on meta, see the module docstring)
    gflops: float
    #: default hub repo (``None``: not on a hub, a local path is required)
    hub_id: str | None
    #: the hub repo needs an accepted licence and a token
    gated: bool
    licence: str
    #: weight file names tried in the hub repo / a local directory, in order
    weight_files: tuple[str, ...]
    #: name of the key-layout converter in :mod:`zoomfeat.encoders.convert` (None: timm layout)
    converter: str | None = None
    #: where a user gets the weights (printed when none are found)
    weights_hint: str = ""
    #: constants' source, for the reader
    source: str = ""
    #: inference dtype TRIDENT runs it in (load.py ``precision``): fp32 | fp16 | bf16 -- a hint for
    #: the pipeline's autocast, not part of the published recipe
    trident_precision: str = "fp32"
    #: explicit tolerance (parameters) where the published figure is nominal rather than rounded
    #: from the released model (the row says why); None: the figure's own rounding
    params_tolerance: int | None = None

    @property
    def params_bounds(self) -> tuple[int, int]:
        """(low, high) parameter counts that agree with :attr:`published_params`."""
        low, high = published_range(self.published_params)
        if self.params_tolerance is None:
            return low, high
        mid = (low + high) // 2
        return mid - self.params_tolerance, mid + self.params_tolerance


def published_range(text: str) -> tuple[int, int]:
    """``"632M"`` -> (631.5e6, 632.5e6); ``"1.1B"`` -> (1.05e9, 1.15e9): the values that round to it."""
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?([MB])", text.strip())
    if not m:
        raise ValueError(f"published parameter count {text!r} is not like '632M' or '1.1B'")
    unit = 1e6 if m[3] == "M" else 1e9
    decimals = len(m[2] or "")
    value = float(f"{m[1]}.{m[2] or 0}") * unit
    half = 0.5 * 10.0**-decimals * unit
    return int(value - half), int(value + half)


_VIT_NOTE = "ViT trunk; published weights in timm layout"

#: the registry (``tiny`` is the test/demo stand-in, not a published encoder)
ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            name="phikon",
            title="Phikon (Owkin; iBOT on 40M TCGA tiles)",
            architecture="ViT-B/16",
            timm_model="vit_base_patch16_224",
            # owkin/phikon config.json (main): ViTModel, hidden 768, 12 layers, 12 heads, MLP 3072,
            # qkv_bias, GELU, layer_norm_eps 1e-12, image 224, patch 16
            timm_kwargs={"img_size": 224, "num_classes": 0, "norm_eps": 1e-12, "dynamic_img_size": True},
            input_px=224,
            resize_px=224,
            # TRIDENT PhikonInferenceEncoder: Resize((224, 224), BILINEAR, antialias), ImageNet stats
            interpolation="bilinear",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            output="cls",  # TRIDENT: last_hidden_state[:, 0] (after ViTModel's final layernorm)
            embed_dim=768,
            published_params="86M",
            params_source="Filiot et al. 2023 (Phikon, medRxiv 2023.07.21.23292757): ViT-B, 86M",
            gflops=35.13,
            trident_precision="fp32",
            hub_id="owkin/phikon",
            gated=False,
            licence="Owkin non-commercial licence",
            weight_files=("pytorch_model.bin", "model.safetensors"),
            converter="hf_vit",
            weights_hint="pytorch_model.bin from https://huggingface.co/owkin/phikon",
            source="owkin/phikon config.json; TRIDENT load.py",
        ),
        EncoderSpec(
            name="phikon_v2",
            title="Phikon-v2 (Owkin; DINOv2 on PANCAN-XL, 456M tiles)",
            architecture="ViT-L/16",
            timm_model="vit_large_patch16_224",
            # owkin/phikon-v2 config.json: Dinov2Model, hidden 1024, 24 layers, 16 heads, mlp_ratio 4,
            # layerscale_value 1.0, layer_norm_eps 1e-6, patch 16, image 224, no SwiGLU, no registers
            timm_kwargs={"img_size": 224, "num_classes": 0, "init_values": 1.0, "dynamic_img_size": True},
            input_px=224,
            resize_px=224,
            # TRIDENT Phikonv2InferenceEncoder: Resize(224) + CenterCrop(224) (bilinear), ImageNet stats
            interpolation="bilinear",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            output="cls",  # TRIDENT: last_hidden_state[:, 0]
            embed_dim=1024,
            published_params="0.3B",
            params_source="Filiot et al. 2024 (Phikon-v2, arXiv 2409.09173): ViT-L, 0.3B",
            gflops=123.11,
            trident_precision="fp32",
            hub_id="owkin/phikon-v2",
            gated=False,
            licence="Owkin non-commercial licence",
            weight_files=("model.safetensors", "pytorch_model.bin"),
            converter="hf_dinov2",
            weights_hint="model.safetensors from https://huggingface.co/owkin/phikon-v2",
            source="owkin/phikon-v2 config.json; TRIDENT load.py",
        ),
        EncoderSpec(
            name="ctranspath",
            title="CTransPath (Wang et al. 2022; semantically-relevant contrastive learning)",
            architecture="Swin-T/4 window 7 with a conv stem",
            timm_model="swin_tiny_patch4_window7_224",
            # TransPath ctran.py (as vendored in TRIDENT model_zoo/ctranspath): swin_tiny_patch4_window7_224
            # with embed_layer=ConvStem (2x [3x3 s2 conv, BN, ReLU] + 1x1 conv, then LayerNorm), head removed
            timm_kwargs={"img_size": 224, "num_classes": 0, "conv_stem": True},
            input_px=224,
            resize_px=224,
            # TRIDENT CTransPathInferenceEncoder: Resize((224, 224), BILINEAR, antialias), ImageNet stats
            interpolation="bilinear",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            output="avg",
            embed_dim=768,
            published_params="28M",
            params_source="Liu et al. 2021 (Swin, Table 1): Swin-T 28M; CTransPath keeps Swin-T (Wang et al. 2022)",
            gflops=8.99,
            trident_precision="fp32",
            hub_id=None,
            gated=False,
            licence="GPL-3.0 (TransPath repository)",
            weight_files=("ctranspath.pth",),
            converter="ctranspath",
            weights_hint=(
                "the published ctranspath.pth (TransPath repository, https://github.com/Xiyue-Wang/TransPath, "
                "'CTransPath' download link)"
            ),
            source="TransPath ctran.py; TRIDENT load.py",
        ),
        EncoderSpec(
            name="uni",
            title="UNI (Chen et al. 2024; DINOv2 on Mass-100K)",
            architecture="ViT-L/16",
            timm_model="vit_large_patch16_224",
            # MahmoodLab/UNI model card; unchanged from zoomfeat.encoders.uni.UNI_KWARGS
            timm_kwargs={"init_values": 1e-5, "dynamic_img_size": True, "num_classes": 0},
            input_px=224,
            resize_px=224,
            interpolation="bilinear",  # UNI card: transforms.Resize(224) (bilinear), ImageNet stats
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            output="cls",
            embed_dim=1024,
            published_params="0.3B",
            params_source="Chen et al. 2024 (UNI, Nature Medicine): ViT-L, 0.3B",
            gflops=123.11,
            trident_precision="fp16",
            hub_id="MahmoodLab/UNI",
            gated=True,
            licence="CC-BY-NC-ND-4.0 (gated: accept the terms on the hub)",
            weight_files=("pytorch_model.bin", "model.safetensors"),
            weights_hint="pytorch_model.bin from https://huggingface.co/MahmoodLab/UNI",
            source="MahmoodLab/UNI model card; TRIDENT load.py",
        ),
        EncoderSpec(
            name="dinov2_vitl14_reg",
            title="DINOv2 ViT-L/14 with registers (Meta; LVD-142M natural images): ZoomLDM NAIP's conditioning",
            architecture="ViT-L/14, 4 register tokens",
            timm_model="vit_large_patch14_reg4_dinov2",
            # timm vit_large_patch14_reg4_dinov2.lvd142m (= torch.hub dinov2_vitl14_reg, which the
            # official ZoomLDM README names for NAIP): LayerScale 1e-5, 4 registers; run at 224 px
            timm_kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
            input_px=224,
            resize_px=256,
            # DINOv2's evaluation transform: Resize(256, BICUBIC) + CenterCrop(224), ImageNet stats
            interpolation="bicubic",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            output="cls",
            embed_dim=1024,
            published_params="0.3B",
            params_source="Oquab et al. 2024 (DINOv2, TMLR) Table: ViT-L/14, 300M; Darcet et al. 2024 (registers)",
            gflops=164.64,
            trident_precision="fp32",
            hub_id="timm/vit_large_patch14_reg4_dinov2.lvd142m",
            gated=False,
            licence="Apache-2.0",
            weight_files=("model.safetensors", "pytorch_model.bin"),
            weights_hint="model.safetensors from https://huggingface.co/timm/vit_large_patch14_reg4_dinov2.lvd142m",
            source="timm model card; facebookresearch/dinov2 hubconf (dinov2_vitl14_reg); ZoomLDM README (NAIP)",
        ),
        EncoderSpec(
            name="uni2_h",
            title="UNI2-h (Mahmood Lab 2025; DINOv2 on 200M+ tiles)",
            architecture="ViT-H/14, 8 register tokens, SwiGLU",
            timm_model="vit_giant_patch14_224",
            # MahmoodLab/UNI2-h model card / TRIDENT UNIv2InferenceEncoder timm_kwargs
            timm_kwargs={
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "num_classes": 0,
                "no_embed_class": True,
                "mlp_layer": "SwiGLUPacked",
                "act_layer": "SiLU",
                "reg_tokens": 8,
                "dynamic_img_size": True,
            },
            input_px=224,
            resize_px=224,
            interpolation="bilinear",  # Resize(224) + CenterCrop(224), ImageNet stats
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            output="cls",
            embed_dim=1536,
            published_params="681M",
            params_source="MahmoodLab/UNI2-h model card (Model Stats: Params (M) 681)",
            gflops=370.94,
            trident_precision="bf16",
            hub_id="MahmoodLab/UNI2-h",
            gated=True,
            licence="CC-BY-NC-ND-4.0 (gated: accept the terms on the hub)",
            weight_files=("pytorch_model.bin", "model.safetensors"),
            weights_hint="pytorch_model.bin from https://huggingface.co/MahmoodLab/UNI2-h",
            source="MahmoodLab/UNI2-h model card; TRIDENT load.py",
        ),
        EncoderSpec(
            name="virchow2",
            title="Virchow2 (Paige; DINOv2 on 3.1M slides)",
            architecture="ViT-H/14, 4 register tokens, SwiGLU",
            timm_model="vit_huge_patch14_224",
            # paige-ai/Virchow2 config.json / TRIDENT Virchow2InferenceEncoder timm_kwargs
            timm_kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "num_classes": 0,
                "reg_tokens": 4,
                "mlp_ratio": 5.3375,
                "global_pool": "",
                "dynamic_img_size": True,
                "mlp_layer": "SwiGLUPacked",
                "act_layer": "SiLU",
            },
            input_px=224,
            resize_px=224,
            interpolation="bicubic",  # Resize(224, BICUBIC), ImageNet stats
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            # model card: concat(class token, mean of patch tokens 5:) -> 2 x 1280
            output="cls+mean",
            embed_dim=2560,
            published_params="632M",
            params_source="Zimmermann et al. 2024 (Virchow2, arXiv 2408.00738, abstract): 632 million",
            # the abstract quotes ViT-H/14's nominal size; the released SwiGLU model as timm builds
            # it from the hub config has 631,239,424 (0.12% less): allowed explicitly
            params_tolerance=1_000_000,
            gflops=340.13,
            trident_precision="fp16",
            hub_id="paige-ai/Virchow2",
            gated=True,
            licence="CC-BY-NC-ND-4.0 (gated: accept the terms on the hub)",
            weight_files=("pytorch_model.bin", "model.safetensors"),
            weights_hint="pytorch_model.bin from https://huggingface.co/paige-ai/Virchow2",
            source="paige-ai/Virchow2 model card; TRIDENT load.py",
        ),
        EncoderSpec(
            name="h_optimus_0",
            title="H-optimus-0 (Bioptimus; DINOv2 on 500K+ slides)",
            architecture="ViT-g/14, 4 register tokens, SwiGLU",
            timm_model="vit_giant_patch14_reg4_dinov2",
            # bioptimus/H-optimus-0 model card / TRIDENT HOptimus0InferenceEncoder timm_kwargs
            timm_kwargs={
                "num_classes": 0,
                "img_size": 224,
                "global_pool": "token",
                "init_values": 1e-5,
                "dynamic_img_size": True,
            },
            input_px=224,
            resize_px=224,
            interpolation="bilinear",  # TRIDENT: Resize(224), H-optimus mean/std
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            output="cls",
            embed_dim=1536,
            published_params="1.1B",
            params_source="bioptimus/H-optimus-0 model card: 1.1B-parameter ViT-g/14",
            gflops=608.35,
            trident_precision="fp16",
            hub_id="bioptimus/H-optimus-0",
            gated=True,
            licence="Apache-2.0 (gated: accept the terms on the hub)",
            weight_files=("pytorch_model.bin", "model.safetensors"),
            weights_hint="pytorch_model.bin from https://huggingface.co/bioptimus/H-optimus-0",
            source="bioptimus/H-optimus-0 model card; TRIDENT load.py",
        ),
        EncoderSpec(
            name="h_optimus_1",
            title="H-optimus-1 (Bioptimus; DINOv2 on 1M+ slides)",
            architecture="ViT-g/14, 4 register tokens, SwiGLU",
            timm_model="vit_giant_patch14_reg4_dinov2",
            timm_kwargs={
                "num_classes": 0,
                "img_size": 224,
                "global_pool": "token",
                "init_values": 1e-5,
                "dynamic_img_size": True,
            },
            input_px=224,
            resize_px=224,
            interpolation="bilinear",
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            output="cls",
            embed_dim=1536,
            published_params="1.1B",
            params_source="bioptimus/H-optimus-1 model card: 1.1B-parameter ViT-g/14",
            gflops=608.35,
            trident_precision="fp16",
            hub_id="bioptimus/H-optimus-1",
            gated=True,
            licence="CC-BY-NC-ND-4.0 (gated: accept the terms on the hub)",
            weight_files=("pytorch_model.bin", "model.safetensors"),
            weights_hint="pytorch_model.bin from https://huggingface.co/bioptimus/H-optimus-1",
            source="bioptimus/H-optimus-1 model card; TRIDENT load.py",
        ),
        EncoderSpec(
            name="gigapath",
            title="Prov-GigaPath tile encoder (Providence/Microsoft; DINOv2 on 1.3B tiles)",
            architecture="ViT-g/16 (timm vit_giant_patch14_dinov2 with patch 16), SwiGLU",
            timm_model="vit_giant_patch14_dinov2",
            # prov-gigapath/prov-gigapath config.json / TRIDENT GigaPathInferenceEncoder timm_kwargs;
            # the base definition adds SwiGLUPacked + SiLU + LayerScale
            timm_kwargs={
                "img_size": 224,
                "in_chans": 3,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "mlp_ratio": 5.33334,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
            input_px=224,
            # model card: Resize(256, BICUBIC) + CenterCrop(224): a 256 px tile is cropped, not resized
            resize_px=256,
            interpolation="bicubic",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            output="cls",
            embed_dim=1536,
            published_params="1.1B",
            params_source="Xu et al. 2024 (Prov-GigaPath, Nature): tile encoder ViT-g, 1.1B",
            gflops=456.19,
            trident_precision="fp16",
            hub_id="prov-gigapath/prov-gigapath",
            gated=True,
            licence="Apache-2.0 (gated: accept the terms on the hub)",
            weight_files=("pytorch_model.bin", "model.safetensors"),
            weights_hint="pytorch_model.bin from https://huggingface.co/prov-gigapath/prov-gigapath",
            source="prov-gigapath/prov-gigapath model card; TRIDENT load.py",
        ),
        EncoderSpec(
            name="conch_v15",
            title="CONCH v1.5 (Mahmood Lab; vision tower of TITAN, CoCa on 1.26M pairs)",
            architecture="ViT-L/16 at 448 px + attentional pooler",
            timm_model="vit_large_patch16_224",
            # TRIDENT model_zoo/conchv1_5 CONCHVisionTower: iBOT-style ViT-L/16 (qkv_bias, LayerScale
            # init 1.0, LayerNorm eps 1e-6), positional embedding interpolated to the 448 px grid,
            # AttentionalPooler(d_model 768, context 1024, 8 heads, 1 query) + LayerNorm(768)
            timm_kwargs={"img_size": 448, "num_classes": 0, "init_values": 1.0, "global_pool": ""},
            input_px=448,
            resize_px=448,
            interpolation="bilinear",  # Resize(448, BILINEAR) + CenterCrop(448), ImageNet stats
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            output="attn_pool",
            embed_dim=768,
            published_params="0.3B",
            params_source="Ding et al. 2024 (TITAN, arXiv 2411.19666): CONCH v1.5 ViT-L, 0.3B",
            gflops=538.41,
            trident_precision="fp16",
            hub_id="MahmoodLab/conchv1_5",
            gated=True,
            licence="CC-BY-NC-ND-4.0 (gated: accept the terms on the hub)",
            weight_files=("pytorch_model_vision.bin",),
            converter="conch_v15",
            weights_hint="pytorch_model_vision.bin from https://huggingface.co/MahmoodLab/conchv1_5",
            source="TRIDENT model_zoo/conchv1_5/conchv1_5.py; MahmoodLab/conchv1_5 model card",
        ),
        EncoderSpec(
            name="kaiko_vits16",
            title="Kaiko ViT-S/16 (kaiko.ai; DINO on TCGA)",
            architecture="ViT-S/16",
            timm_model="vit_small_patch16_224",
            # TRIDENT KaikoS16InferenceEncoder: timm vit_small_patch16_224, num_classes 0,
            # dynamic_img_size, img_size 224; model(x) = class token after the final norm
            timm_kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
            input_px=224,
            resize_px=224,
            # TRIDENT: Resize(224, BILINEAR, antialias) + CenterCrop(224), kaiko stats (0.5, 0.5)
            interpolation="bilinear",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            output="cls",
            embed_dim=384,
            published_params="22M",
            params_source="Aben et al. 2024 (kaiko.ai, arXiv 2404.15217): ViT-S/16, 22M (DeiT-S size)",
            gflops=9.20,
            trident_precision="fp32",
            hub_id="1aurent/vit_small_patch16_224.kaiko_ai_towards_large_pathology_fms",
            gated=False,
            licence="kaiko non-commercial licence (hub card)",
            weight_files=("model.safetensors",),
            weights_hint=(
                "model.safetensors from "
                "https://huggingface.co/1aurent/vit_small_patch16_224.kaiko_ai_towards_large_pathology_fms"
            ),
            source="TRIDENT load.py (KaikoS16InferenceEncoder); the hub card",
        ),
        EncoderSpec(
            name="tiny",
            title="tiny test/demo encoder (seeded random ViT, not a published model)",
            architecture="ViT, width 32, depth 2",
            timm_model="",
            timm_kwargs={},
            input_px=224,
            resize_px=224,
            interpolation="bilinear",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            output="cls",
            embed_dim=32,
            published_params="0.05M",
            params_source="zoomfeat.encoders.tiny (not published)",
            gflops=0.03,
            trident_precision="fp32",
            hub_id=None,
            gated=False,
            licence="zoomfeat's",
            weight_files=(),
            source="zoomfeat.encoders.tiny",
        ),
    )
}

#: embedding width per encoder name (known without building the model)
EMBED_DIM = {name: spec.embed_dim for name, spec in ENCODERS.items()}


def get_spec(name: str) -> EncoderSpec:
    """The registry row of ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    from zoomfeat.runtime.errors import ConfigError

    try:
        return ENCODERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown encoder {name!r}: use one of {', '.join(ENCODERS)} (encoder=<name>)"
        ) from None
