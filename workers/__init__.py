"""What runs on (GPU) workers: model bundles, tile encoders, MIL heads, batched inference, and the
WorkerPlugin that loads a model once per worker."""

from workers._bundle import (
    LoadedModel,
    file_sha256,
    init_bundle,
    load_bundle,
    manifest_sha256,
    read_manifest,
    save_bundle,
)
from workers._encoders import ENCODERS, Encoder, ResNetTrunk, TinyCNN
from workers._heads import HEADS, GatedABMIL, MILHead, MILOutput
from workers._inference import SlidePrediction, encode_tiles, predict_slide
from workers._plugin import ModelPlugin, get_model
from workers.errors import ModelBundleError, UnknownComponentError, WorkerError

__all__ = [
    "ENCODERS",
    "HEADS",
    "Encoder",
    "GatedABMIL",
    "LoadedModel",
    "MILHead",
    "MILOutput",
    "ModelBundleError",
    "ModelPlugin",
    "ResNetTrunk",
    "SlidePrediction",
    "TinyCNN",
    "UnknownComponentError",
    "WorkerError",
    "encode_tiles",
    "file_sha256",
    "get_model",
    "init_bundle",
    "load_bundle",
    "manifest_sha256",
    "predict_slide",
    "read_manifest",
    "save_bundle",
]
