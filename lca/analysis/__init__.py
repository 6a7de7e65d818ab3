"""Single-run measurements on LCA arrays: noise, heavy tails, oscillations, layers, synchrony.

Pure numpy, and streaming: a (T, K) input such as ``run.lca(split)`` (5000 × 1.4 M float32
is 28 GB) is only ever read in blocks of ``chunk_rows`` rows, never whole. Inputs are
"row-sliceable arrays": anything with ``.shape`` whose ``a[i:j]`` returns a numpy array
(numpy and zarr arrays both qualify). Results are small dataclasses (``to_dict()`` gives
plain JSON types, non-finite floats as ``None``) or dicts of numpy arrays.

Sign convention: A[t, i] < 0 means parameter i helped (lowered the loss) at iteration t,
A > 0 means it hurt, A == 0 means it had no effect.

One module per job: `streaming` (block readers), `distributions` (helped
fractions, moments, histograms), `series` (per-layer series, oscillations,
synchronisation), `parameters` (units, kernels, curves, agreement),
`run_summary` ([`summary`][lca.analysis.run_summary.summary]), `statistics` (across runs),
`per_class`,
`generalization` (train vs held-out splits), `causes` (the LCA split by the
optimiser's update terms: why parameters hurt) and `diagnostics` (the conservation
check, ``lca.verify_error``; it reads a run directory, so it is imported on its own).
"""

from .causes import (
    PARTS,
    CauseSummary,
    HurtingShares,
    SumsCheck,
    ValidationDrivers,
    cause_bins,
    cause_names,
    cause_totals,
    hurting_shares,
    residual_summary,
    summarise_causes,
    sums_check,
    validation_drivers,
    window_edges,
)
from .distributions import (
    Helped,
    Moments,
    ValueHistogram,
    helped_fractions,
    value_histogram,
    value_moments,
)
from .parameters import (
    Agreement,
    agreement,
    kernel_matrix,
    parameter_curves,
    unit_series,
)
from .per_class import (
    class_specialisation,
    class_synchronisation,
    neuron_input_totals,
)
from .run_summary import (
    summary,
)
from .series import (
    Oscillations,
    Synchronisation,
    approximate_loss,
    layer_series,
    layer_totals,
    local_minima,
    oscillations,
    synchronisation,
    top_moments,
)
from .statistics import (
    across_runs,
    regularized_incomplete_beta,
    sign_test,
    t_two_sided_p,
)
from .streaming import (
    WORK_ELEMENTS,
    RowSliceable,
    jsonable,
)

__all__ = [
    "Agreement",
    "CauseSummary",
    "Helped",
    "HurtingShares",
    "Moments",
    "Oscillations",
    "PARTS",
    "RowSliceable",
    "SumsCheck",
    "Synchronisation",
    "ValidationDrivers",
    "ValueHistogram",
    "WORK_ELEMENTS",
    "across_runs",
    "agreement",
    "approximate_loss",
    "cause_bins",
    "cause_names",
    "cause_totals",
    "class_specialisation",
    "class_synchronisation",
    "helped_fractions",
    "hurting_shares",
    "jsonable",
    "kernel_matrix",
    "layer_series",
    "layer_totals",
    "local_minima",
    "neuron_input_totals",
    "oscillations",
    "parameter_curves",
    "regularized_incomplete_beta",
    "residual_summary",
    "sign_test",
    "summarise_causes",
    "summary",
    "sums_check",
    "synchronisation",
    "t_two_sided_p",
    "top_moments",
    "unit_series",
    "validation_drivers",
    "value_histogram",
    "value_moments",
    "window_edges",
]
