"""``lca prune``: remove parameters by their LCA (`pruner`), re-evaluate the pruned model
(`evaluation`) and draw the accuracy curves (`figure`).
"""

from .evaluation import (
    PruneRow,
    PruneTable,
    PruningEvaluator,
    SplitScore,
    average_row,
    figure_curves,
)
from .pruner import (
    CRITERIA,
    DEFAULT_FRACTIONS,
    INCLUDE_ALIASES,
    LATE_FRACTION,
    LCA_CRITERIA,
    SCOPES,
    importance,
    late_start,
    lca_sums,
    parse_criteria,
    parse_fractions,
    prunable_indices,
    prune,
    pruned_count,
    pruned_theta,
    pruning_mask,
    scope_groups,
)

__all__ = [
    "CRITERIA",
    "DEFAULT_FRACTIONS",
    "INCLUDE_ALIASES",
    "LATE_FRACTION",
    "LCA_CRITERIA",
    "PruneRow",
    "PruneTable",
    "PruningEvaluator",
    "SCOPES",
    "SplitScore",
    "average_row",
    "figure_curves",
    "importance",
    "late_start",
    "lca_sums",
    "parse_criteria",
    "parse_fractions",
    "prunable_indices",
    "prune",
    "pruned_count",
    "pruned_theta",
    "pruning_mask",
    "scope_groups",
]
