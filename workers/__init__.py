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
from workers._clam import (
    CLAM,
    CLAMMultiBranch,
    CLAMSingleBranch,
    import_clam_checkpoint,
    load_encoder_weights,
    smooth_top1_svm_loss,
)
from workers._encoders import ENCODERS, Encoder, ResNet50Trunc, ResNetTrunk, TinyCNN
from workers._heads import (
    ABMIL,
    HEADS,
    GatedABMIL,
    InstanceLossHead,
    MILHead,
    MILOutput,
    PoolingMIL,
)
from workers._inference import SlidePrediction, encode_tiles, predict_slide
from workers._plugin import ModelPlugin, get_model
from workers._transmil import NystromAttention, TransMIL, nystrom_attention
from workers.errors import ModelBundleError, UnknownComponentError, WorkerError

__all__ = [
    "ABMIL",
    "CLAM",
    "ENCODERS",
    "HEADS",
    "CLAMMultiBranch",
    "CLAMSingleBranch",
    "Encoder",
    "GatedABMIL",
    "InstanceLossHead",
    "LoadedModel",
    "MILHead",
    "MILOutput",
    "ModelBundleError",
    "ModelPlugin",
    "NystromAttention",
    "PoolingMIL",
    "ResNet50Trunc",
    "ResNetTrunk",
    "SlidePrediction",
    "TinyCNN",
    "TransMIL",
    "UnknownComponentError",
    "WorkerError",
    "encode_tiles",
    "file_sha256",
    "get_model",
    "import_clam_checkpoint",
    "init_bundle",
    "load_bundle",
    "load_encoder_weights",
    "manifest_sha256",
    "nystrom_attention",
    "predict_slide",
    "read_manifest",
    "save_bundle",
    "smooth_top1_svm_loss",
]
