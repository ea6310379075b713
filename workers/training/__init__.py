"""Learning from features folders, and self-supervised encoder pretraining.

Bottom up: `_config` (settings and results), `_splits` (folds, class weights, the bag loss),
`_loop` (reproducibility, `train_fold`, `cross_validate`; no I/O), `_features` (the features
folder), `_labels` (the one labels-CSV reader and matcher, also used by `slidemill evaluate`),
`_run` (`train_from_features` and the training folder it writes), `_select` (choosing an
encoder/head pair by nested cross-validation, given a fit; no training) and `_select_run`
(`select_and_train`: `train --select auto`); `_pretrain` beside them.
"""

from slidemill.workers.training._config import (
    CrossValidation,
    EpochReport,
    FoldResult,
    TrainConfig,
    TrainedHead,
)
from slidemill.workers.training._features import (
    FeatureBags,
    FeatureFolder,
    FeatureSlide,
    scan_features,
)
from slidemill.workers.training._labels import (
    LabelMatch,
    LabelRow,
    SlideRef,
    Unmatched,
    match_labels,
    read_label_csv,
)
from slidemill.workers.training._loop import (
    build_head,
    cross_validate,
    fit_split,
    predict_probabilities,
    train_epochs,
    train_fold,
)
from slidemill.workers.training._pretrain import (
    PretrainConfig,
    PretrainReport,
    augment,
    normalise,
    nt_xent,
    pretrain_encoder,
)
from slidemill.workers.training._run import (
    TrainingReport,
    resolve_model_dir,
    train_from_features,
)
from slidemill.workers.training._select import (
    DEFAULT_HEADS,
    RULE,
    Candidate,
    Choice,
    Fit,
    NestedSelection,
    OuterFold,
    Scores,
    SelectionConfig,
    SelectionRecord,
    choose,
    n_fits,
    nested_select,
    score,
)
from slidemill.workers.training._select_run import SelectionReport, select_and_train
from slidemill.workers.training._splits import (
    bag_loss,
    class_weights,
    fold_seed,
    stratified_folds,
    stratified_split,
)

__all__ = [
    "DEFAULT_HEADS",
    "RULE",
    "Candidate",
    "Choice",
    "CrossValidation",
    "EpochReport",
    "FeatureBags",
    "FeatureFolder",
    "FeatureSlide",
    "Fit",
    "FoldResult",
    "LabelMatch",
    "LabelRow",
    "NestedSelection",
    "OuterFold",
    "PretrainConfig",
    "PretrainReport",
    "Scores",
    "SelectionConfig",
    "SelectionRecord",
    "SelectionReport",
    "SlideRef",
    "TrainConfig",
    "TrainedHead",
    "TrainingReport",
    "Unmatched",
    "augment",
    "bag_loss",
    "build_head",
    "choose",
    "class_weights",
    "cross_validate",
    "fit_split",
    "fold_seed",
    "match_labels",
    "n_fits",
    "nested_select",
    "normalise",
    "nt_xent",
    "predict_probabilities",
    "pretrain_encoder",
    "read_label_csv",
    "resolve_model_dir",
    "scan_features",
    "score",
    "select_and_train",
    "stratified_folds",
    "stratified_split",
    "train_epochs",
    "train_fold",
    "train_from_features",
]
