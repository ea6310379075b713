"""Inference on workers: batched tile encoding, slide prediction, and the WorkerPlugin that loads a
model once per worker."""

from slidemill.workers.inference._plugin import ModelPlugin, get_model, loaded_models
from slidemill.workers.inference._predict import SlidePrediction, encode_tiles, predict_slide
from slidemill.workers.models import InferenceSettings, inference_settings

__all__ = [
    "InferenceSettings",
    "ModelPlugin",
    "SlidePrediction",
    "encode_tiles",
    "get_model",
    "inference_settings",
    "loaded_models",
    "predict_slide",
]
