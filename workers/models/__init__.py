"""Model bundles and what they hold: encoders and MIL heads (registries), CLAM, ensembles, the
device policy, and CLAM checkpoint import."""

from slidemill.workers.models._bundle import (
    LoadedModel,
    check_bundle,
    encoder_width,
    file_sha256,
    init_bundle,
    load_bundle,
    manifest_sha256,
    read_manifest,
    save_bundle,
)
from slidemill.workers.models._clam import (
    CLAM,
    CLAMMultiBranch,
    CLAMSingleBranch,
    ClamSize,
    ClamType,
    smooth_top1_svm_loss,
)
from slidemill.workers.models._clam_import import import_clam_checkpoint
from slidemill.workers.models._device import InferenceSettings, default_device, inference_settings
from slidemill.workers.models._encoders import (
    ENCODERS,
    ConcatEncoder,
    Encoder,
    ResNet50Trunc,
    ResNetTrunk,
    TimmEncoder,
    TinyCNN,
    TorchScriptEncoder,
)
from slidemill.workers.models._ensemble import (
    ENSEMBLE,
    EnsembleMIL,
    ensemble_of,
    member_kwargs_json,
)
from slidemill.workers.models._handcrafted import HANDCRAFTED_FEATURES, HandcraftedEncoder
from slidemill.workers.models._heads import (
    ABMIL,
    HEADS,
    FittedInputHead,
    GatedABMIL,
    InstanceABMIL,
    InstanceLossHead,
    MILHead,
    MILOutput,
    PoolingMIL,
    TopKMIL,
)
from slidemill.workers.models._histocnn import HistoCNN
from slidemill.workers.models._reference import (
    REFERENCE_SHRINKAGE,
    ReferenceStats,
    fit_reference,
    load_reference,
    ood_score,
    save_reference,
)
from slidemill.workers.models._transmil import (
    NystromAttention,
    TransMIL,
    iterative_pinv,
    nystrom_attention,
    nystrom_from_landmarks,
)
from slidemill.workers.models._weights import load_encoder_weights

__all__ = [
    "ABMIL",
    "CLAM",
    "ENCODERS",
    "ENSEMBLE",
    "HANDCRAFTED_FEATURES",
    "HEADS",
    "REFERENCE_SHRINKAGE",
    "CLAMMultiBranch",
    "CLAMSingleBranch",
    "ClamSize",
    "ClamType",
    "ConcatEncoder",
    "Encoder",
    "EnsembleMIL",
    "FittedInputHead",
    "GatedABMIL",
    "HandcraftedEncoder",
    "HistoCNN",
    "InferenceSettings",
    "InstanceABMIL",
    "InstanceLossHead",
    "LoadedModel",
    "MILHead",
    "MILOutput",
    "NystromAttention",
    "PoolingMIL",
    "ReferenceStats",
    "ResNet50Trunc",
    "ResNetTrunk",
    "TimmEncoder",
    "TinyCNN",
    "TopKMIL",
    "TorchScriptEncoder",
    "TransMIL",
    "check_bundle",
    "default_device",
    "encoder_width",
    "ensemble_of",
    "file_sha256",
    "fit_reference",
    "import_clam_checkpoint",
    "inference_settings",
    "init_bundle",
    "iterative_pinv",
    "load_bundle",
    "load_encoder_weights",
    "load_reference",
    "manifest_sha256",
    "member_kwargs_json",
    "nystrom_attention",
    "nystrom_from_landmarks",
    "ood_score",
    "read_manifest",
    "save_bundle",
    "save_reference",
    "smooth_top1_svm_loss",
]
