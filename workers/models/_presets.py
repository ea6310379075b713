"""Named pathology foundation-model encoders: what each model card says, as data.

A preset is built offline from the arguments its card gives (timm's `create_model` arguments, or
a transformers config written out here, so no config.json is fetched) and filled from its
publisher's weight file, in the publisher's key layout: a file the lab names, or the Hugging Face
cache already on disk. Nothing here imports timm or transformers; `_preset_encoder` builds the
models, `_preset_weights` finds their files.

CONCH v1.5 is not a preset: its embedding is a CoCa attentional pooler over a custom ViT trunk,
neither of which timm builds, and the code is not ours to copy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from slidemill.workers.errors import UnknownComponentError


@dataclass(frozen=True, slots=True)
class LayerRef:
    """A layer (a class, or a partial of one like timm's `SwiGLUPacked`) named by its import
    path, imported only when a model is built."""

    path: str
    """Dotted path, e.g. "timm.layers.SwiGLUPacked"."""

    def resolve(self) -> Callable[..., Any]:
        """The layer constructor itself."""
        module, _, name = self.path.rpartition(".")
        resolved = getattr(importlib.import_module(module), name)
        if not callable(resolved):
            raise TypeError(f"{self.path} is not a layer constructor")
        return resolved


Argument = int | float | str | bool | LayerRef
"""A value of a model card's constructor arguments."""

Library = Literal["timm", "transformers"]
Pooling = Literal["cls", "cls+mean"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWIGLU = LayerRef("timm.layers.SwiGLUPacked")
SILU = LayerRef("torch.nn.SiLU")


def _frozen(arguments: Mapping[str, Argument]) -> Mapping[str, Argument]:
    return MappingProxyType(dict(arguments))


@dataclass(frozen=True, slots=True)
class EncoderPreset:
    """One published tile encoder: its architecture as its card gives it, the tiles it was
    trained on, its output, and where its weights come from."""

    name: str
    """Registered encoder name (`ENCODERS.build(name)`), recorded in bundles."""
    hub_id: str
    """Hugging Face repository the publisher ships the weights in."""
    library: Library
    """What builds it: timm (`create_model`) or transformers (a model class and its config)."""
    architecture: str
    """timm model name, or transformers model class (e.g. "Dinov2Model")."""
    arguments: Mapping[str, Argument] = field(hash=False)
    """timm `create_model` arguments, or the transformers config's values, as the card gives."""
    tile_px: int
    """Tile edge in pixels it was trained on."""
    mpp: float
    """µm/px of those tiles."""
    mean: tuple[float, float, float]
    """Per-channel normalisation mean of RGB in [0, 1]."""
    std: tuple[float, float, float]
    """Per-channel normalisation standard deviation."""
    width: int
    """Length of one tile's embedding."""
    pooling: Pooling
    """"cls": the class token; "cls+mean": the class token beside the mean of the patch tokens
    (register tokens left out)."""
    params: int
    """Exact parameter count of the model as built here (what the tests check)."""
    published_params: str
    """The parameter count as the card or paper rounds it, e.g. "1.1B"."""
    weight_files: tuple[str, ...]
    """Weight files the publisher ships in `hub_id`, the one looked for first first."""
    licence: str
    """Licence, and whether the hub gates the download."""
    model_arguments: Mapping[str, Argument] = field(default_factory=dict, hash=False)
    """transformers model-class arguments beyond the config (e.g. `add_pooling_layer`)."""
    optional_keys: tuple[str, ...] = ()
    """Key prefixes of the publisher's file the embedding does not use: accepted when extra (a
    pooler the card's code leaves out) and, for transformers, which initialises them, when
    absent (DINOv2's mask token)."""

    @property
    def depth_argument(self) -> str:
        """The argument that sets the number of transformer blocks."""
        return "depth" if self.library == "timm" else "num_hidden_layers"

    @property
    def any_tile_size(self) -> bool:
        """Whether tiles other than `tile_px` work (interpolated position embeddings)."""
        if self.library == "timm":
            return bool(self.arguments.get("dynamic_img_size", False))
        return self.architecture == "Dinov2Model"  # ViTModel keeps its trained grid


PRESETS: Mapping[str, EncoderPreset] = MappingProxyType(
    {
        p.name: p
        for p in (
            EncoderPreset(
                name="uni",
                hub_id="MahmoodLab/UNI",
                library="timm",
                architecture="vit_large_patch16_224",
                arguments=_frozen(
                    {
                        "img_size": 224,
                        "patch_size": 16,
                        "init_values": 1e-5,
                        "num_classes": 0,
                        "dynamic_img_size": True,
                    }
                ),
                tile_px=224,
                mpp=0.5,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                width=1024,
                pooling="cls",
                params=303_350_784,
                published_params="303M",
                weight_files=("pytorch_model.bin",),
                licence="CC-BY-NC-ND-4.0; gated: accept the terms on the hub",
            ),
            EncoderPreset(
                name="uni2-h",
                hub_id="MahmoodLab/UNI2-h",
                library="timm",
                architecture="vit_giant_patch14_224",
                arguments=_frozen(
                    {
                        "img_size": 224,
                        "patch_size": 14,
                        "depth": 24,
                        "num_heads": 24,
                        "init_values": 1e-5,
                        "embed_dim": 1536,
                        "mlp_ratio": 2.66667 * 2,
                        "num_classes": 0,
                        "no_embed_class": True,
                        "mlp_layer": SWIGLU,
                        "act_layer": SILU,
                        "reg_tokens": 8,
                        "dynamic_img_size": True,
                    }
                ),
                tile_px=224,
                mpp=0.5,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                width=1536,
                pooling="cls",
                params=681_394_176,
                published_params="681M",
                weight_files=("pytorch_model.bin",),
                licence="CC-BY-NC-ND-4.0; gated: accept the terms on the hub",
            ),
            EncoderPreset(
                name="virchow2",
                hub_id="paige-ai/Virchow2",
                library="timm",
                architecture="vit_huge_patch14_224",
                arguments=_frozen(
                    {
                        "img_size": 224,
                        "init_values": 1e-5,
                        "num_classes": 0,
                        "reg_tokens": 4,
                        "mlp_ratio": 5.3375,
                        "global_pool": "",
                        "dynamic_img_size": True,
                        "mlp_layer": SWIGLU,
                        "act_layer": SILU,
                    }
                ),
                tile_px=224,
                mpp=0.5,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                width=2560,
                pooling="cls+mean",
                params=631_239_424,
                published_params="632M",
                weight_files=("model.safetensors", "pytorch_model.bin"),
                licence="CC-BY-NC-ND-4.0; gated: accept the terms on the hub",
            ),
            *(
                EncoderPreset(
                    name=f"h-optimus-{version}",
                    hub_id=f"bioptimus/H-optimus-{version}",
                    library="timm",
                    architecture="vit_giant_patch14_reg4_dinov2",
                    arguments=_frozen(
                        {
                            "img_size": 224,
                            "global_pool": "token",
                            "init_values": 1e-5,
                            "dynamic_img_size": False,
                            "num_classes": 0,
                        }
                    ),
                    tile_px=224,
                    mpp=0.5,
                    mean=(0.707223, 0.578729, 0.703617),
                    std=(0.211883, 0.230117, 0.177517),
                    width=1536,
                    pooling="cls",
                    params=1_134_774_272,
                    published_params="1.1B",
                    weight_files=("pytorch_model.bin",),
                    licence=licence,
                )
                for version, licence in (
                    ("0", "Apache-2.0; gated: accept the terms on the hub"),
                    ("1", "Bioptimus licence (see the card); gated: access granted on request"),
                )
            ),
            EncoderPreset(
                name="prov-gigapath",
                hub_id="prov-gigapath/prov-gigapath",
                library="timm",
                architecture="vit_giant_patch14_dinov2",
                arguments=_frozen(
                    {
                        "img_size": 224,
                        "in_chans": 3,
                        "patch_size": 16,
                        "embed_dim": 1536,
                        "depth": 40,
                        "num_heads": 24,
                        "init_values": 1e-5,
                        "mlp_ratio": 5.33334,
                        "num_classes": 0,
                    }
                ),
                tile_px=224,
                mpp=0.5,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                width=1536,
                pooling="cls",
                params=1_134_953_984,
                published_params="1.1B",
                weight_files=("pytorch_model.bin",),
                licence="Apache-2.0; gated: accept the terms on the hub",
            ),
            EncoderPreset(
                name="phikon",
                hub_id="owkin/phikon",
                library="transformers",
                architecture="ViTModel",
                arguments=_frozen(
                    {
                        "hidden_size": 768,
                        "num_hidden_layers": 12,
                        "num_attention_heads": 12,
                        "intermediate_size": 3072,
                        "hidden_act": "gelu",
                        "hidden_dropout_prob": 0.0,
                        "attention_probs_dropout_prob": 0.0,
                        "layer_norm_eps": 1e-12,
                        "image_size": 224,
                        "patch_size": 16,
                        "num_channels": 3,
                        "qkv_bias": True,
                        "encoder_stride": 16,
                    }
                ),
                model_arguments=_frozen({"add_pooling_layer": False}),
                optional_keys=("pooler.",),
                tile_px=224,
                mpp=0.5,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                width=768,
                pooling="cls",
                params=85_798_656,
                published_params="85.8M",
                weight_files=("model.safetensors", "pytorch_model.bin"),
                licence="Owkin non-commercial licence; not gated",
            ),
            EncoderPreset(
                name="phikon-v2",
                hub_id="owkin/phikon-v2",
                library="transformers",
                architecture="Dinov2Model",
                arguments=_frozen(
                    {
                        "hidden_size": 1024,
                        "num_hidden_layers": 24,
                        "num_attention_heads": 16,
                        "mlp_ratio": 4,
                        "hidden_act": "gelu",
                        "layer_norm_eps": 1e-6,
                        "image_size": 224,
                        "patch_size": 16,
                        "num_channels": 3,
                        "qkv_bias": True,
                        "use_swiglu_ffn": False,
                    }
                ),
                optional_keys=("embeddings.mask_token",),
                tile_px=224,
                mpp=0.5,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                width=1024,
                pooling="cls",
                params=303_351_808,
                published_params="303M",
                weight_files=("model.safetensors",),
                licence="Owkin non-commercial licence; not gated",
            ),
        )
    }
)
"""Every preset by name, in the order `slidemill encoders` lists them."""


def get_preset(name: str) -> EncoderPreset:
    """The preset called `name`, or an error listing the presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownComponentError(
            f"no encoder preset {name!r}; presets: {', '.join(PRESETS)}"
        ) from None
