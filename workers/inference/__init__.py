"""Inference on workers: batched tile encoding, slide prediction, and the WorkerPlugin that loads a
model once per worker."""

from slidemill.workers.inference._jpeg import (
    DecodeRequest,
    JpegDecode,
    choose_decode,
    decode_jpegs,
    device_decode_available,
    full_stream,
)
from slidemill.workers.inference._plugin import ModelPlugin, get_model, loaded_models
from slidemill.workers.inference._predict import (
    SlidePrediction,
    encode_tensor,
    encode_tiles,
    predict_slide,
)
from slidemill.workers.models import InferenceSettings, inference_settings

__all__ = [
    "DecodeRequest",
    "InferenceSettings",
    "JpegDecode",
    "ModelPlugin",
    "SlidePrediction",
    "choose_decode",
    "decode_jpegs",
    "device_decode_available",
    "encode_tensor",
    "encode_tiles",
    "full_stream",
    "get_model",
    "inference_settings",
    "loaded_models",
    "predict_slide",
]
