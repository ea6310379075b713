"""Why the model said so: Shapley values of a slide's regions (Captum), absent tiles removed
from the bag; deletion and insertion curves that measure how faithful each explanation is; and
feature-level reasons (Integrated Gradients by named feature) for `handcrafted` encoders. Pure
functions of a head and a bag: the Dask task and the benchmark carry them out."""

from slidemill.workers.explain._curves import (
    Curve,
    Probability,
    deletion_curve,
    insertion_curve,
    region_order,
)
from slidemill.workers.explain._explain import (
    DEFAULT_BUDGET,
    DEFAULT_MAX_PLAYERS,
    EXPLANATIONS,
    MAX_REASON_TILES,
    ExplainSettings,
    Explanation,
    Faithfulness,
    choose_target,
    explain_bag,
)
from slidemill.workers.explain._masked import (
    MaskedBag,
    empty_log_odds,
    log_odds,
    pooled_forward,
    removed_forward,
)
from slidemill.workers.explain._players import Players, choose_players, group_tiles
from slidemill.workers.explain._reasons import FeatureGroups, feature_groups, tile_reasons
from slidemill.workers.explain._shapley import RegionShapley, region_shapley, tile_shares

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_MAX_PLAYERS",
    "EXPLANATIONS",
    "MAX_REASON_TILES",
    "Curve",
    "ExplainSettings",
    "Explanation",
    "Faithfulness",
    "FeatureGroups",
    "MaskedBag",
    "Players",
    "Probability",
    "RegionShapley",
    "choose_players",
    "choose_target",
    "deletion_curve",
    "empty_log_odds",
    "explain_bag",
    "feature_groups",
    "group_tiles",
    "insertion_curve",
    "log_odds",
    "pooled_forward",
    "region_order",
    "region_shapley",
    "removed_forward",
    "tile_reasons",
    "tile_shares",
]
