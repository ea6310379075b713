"""slidemill's contracts: pydantic v2 models shared by the pipeline, the workers and lab systems.

Everything that crosses a boundary (a config file, a model bundle's manifest, a result file,
the attributes of a Zarr store) is one of these models; `write_json_schemas` exports them as
JSON Schema.
"""

from slidemill.schemas._cluster import (
    BACKEND_NAMES,
    IMAGE_VERSION_FIELD,
    Adapt,
    AnyClusterConfig,
    ClusterConfig,
    CudaClusterConfig,
    ExistingClusterConfig,
    KubernetesClusterConfig,
    KubernetesCpuPool,
    KubernetesGpuPool,
    LocalClusterConfig,
    NannyEnv,
    SlurmClusterConfig,
    SlurmContainer,
    SlurmCpuPool,
    SlurmGpuPool,
    TlsFiles,
    image_tag,
)
from slidemill.schemas._evaluation import (
    ClassificationMetrics,
    ConfidenceInterval,
    EvaluationReport,
    FoldMetrics,
    LocalisationMetrics,
    ReliabilityBin,
    TemperatureScaling,
)
from slidemill.schemas._export import write_json_schemas
from slidemill.schemas._models import (
    SCHEMA_MODELS,
    ModelManifest,
    Normalisation,
    Provenance,
    RunOptions,
    RunSpec,
    SlideResult,
    SlideStatus,
    SlideStoreAttrs,
    StageTimings,
    TilingSpec,
    TissueMethod,
)
from slidemill.schemas._qc import (
    REFERENCE_FORMAT,
    Calibration,
    FeatureReference,
    Flag,
    FlagCode,
    QCMode,
    SlideQC,
)
from slidemill.schemas._validate import describe, validated
from slidemill.schemas._version import slidemill_version
from slidemill.schemas.errors import InvalidInputError, LayoutError, SlidemillError, one_line

# `write_json_schemas` exports every entry of this dict (the same object `_export` reads).
SCHEMA_MODELS["cluster_config"] = ClusterConfig
SCHEMA_MODELS["evaluation_report"] = EvaluationReport

__all__ = [
    "BACKEND_NAMES",
    "IMAGE_VERSION_FIELD",
    "REFERENCE_FORMAT",
    "SCHEMA_MODELS",
    "Adapt",
    "AnyClusterConfig",
    "Calibration",
    "ClassificationMetrics",
    "ClusterConfig",
    "ConfidenceInterval",
    "CudaClusterConfig",
    "EvaluationReport",
    "ExistingClusterConfig",
    "FeatureReference",
    "Flag",
    "FlagCode",
    "FoldMetrics",
    "InvalidInputError",
    "KubernetesClusterConfig",
    "KubernetesCpuPool",
    "KubernetesGpuPool",
    "LayoutError",
    "LocalClusterConfig",
    "LocalisationMetrics",
    "ModelManifest",
    "NannyEnv",
    "Normalisation",
    "Provenance",
    "QCMode",
    "ReliabilityBin",
    "RunOptions",
    "RunSpec",
    "SlideQC",
    "SlideResult",
    "SlideStatus",
    "SlideStoreAttrs",
    "SlidemillError",
    "SlurmClusterConfig",
    "SlurmContainer",
    "SlurmCpuPool",
    "SlurmGpuPool",
    "StageTimings",
    "TemperatureScaling",
    "TilingSpec",
    "TissueMethod",
    "TlsFiles",
    "describe",
    "image_tag",
    "one_line",
    "slidemill_version",
    "validated",
    "write_json_schemas",
]
