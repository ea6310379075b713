"""Inference on workers: batched tile encoding (its batch fitted to the worker's memory when the run
sets none; the encoder's linear layers in int8 on CPU workers when it asks), slide prediction,
and the WorkerPlugin that loads a model once per worker."""

from slidemill.workers.inference._batching import (
    AUTO_BATCH_CAP,
    LIVE_OUTPUTS,
    activation_bytes,
    auto_batch_size,
    fit_batch,
    free_memory,
)
from slidemill.workers.inference._jpeg import (
    DecodeRequest,
    JpegDecode,
    choose_decode,
    decode_jpegs,
    device_decode_available,
    full_stream,
)
from slidemill.workers.inference._plugin import (
    ModelPlugin,
    effective_quantize,
    get_model,
    loaded_models,
    loaded_quantized,
)
from slidemill.workers.inference._predict import (
    SlidePrediction,
    encode_tensor,
    encode_tiles,
    predict_slide,
)
from slidemill.workers.inference._quantize import (
    Quantize,
    quantizable_layers,
    quantize_encoder,
    quantized_layers,
)
from slidemill.workers.models import InferenceSettings, inference_settings

__all__ = [
    "AUTO_BATCH_CAP",
    "LIVE_OUTPUTS",
    "DecodeRequest",
    "InferenceSettings",
    "JpegDecode",
    "ModelPlugin",
    "Quantize",
    "SlidePrediction",
    "activation_bytes",
    "auto_batch_size",
    "choose_decode",
    "decode_jpegs",
    "device_decode_available",
    "effective_quantize",
    "encode_tensor",
    "encode_tiles",
    "fit_batch",
    "free_memory",
    "full_stream",
    "get_model",
    "inference_settings",
    "loaded_models",
    "loaded_quantized",
    "predict_slide",
    "quantizable_layers",
    "quantize_encoder",
    "quantized_layers",
]
