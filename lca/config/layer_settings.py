"""Per-variable optimiser settings: ``optimizer.layers`` overrides resolved against a model.

Training applies them; the allocation's cause terms replay them, so they live below both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schema import Config, ConfigError


@dataclass(frozen=True)
class LayerSettings:
    """Per-variable optimiser settings, resolved from the config against the model layout."""

    lr: np.ndarray  # (num_variables,) float32
    momentum: np.ndarray  # (num_variables,) float32
    freeze_from: np.ndarray  # (num_variables,) int64, a huge number where never frozen


def resolve_layer_settings(config: Config, layout) -> LayerSettings:
    """Map ``optimizer.layers`` overrides (keyed by layer group) onto the model's variables.

    ``layout``: a `lca.layout.ParameterLayout` (its ``layers`` and ``entries``).
    """
    opt = config.optimizer
    known = layout.layers
    for layer in opt.layers:
        if layer not in known:
            raise ConfigError(
                f"optimizer.layers.{layer}: no such layer in model "
                f"{config.model.builder or config.model.name} "
                f"(layers: {', '.join(known)})"
            )
    never = np.iinfo(np.int64).max
    lr, momentum, freeze = [], [], []
    for entry in layout.entries:
        override = opt.layers.get(entry.layer)
        lr.append(override.lr if override and override.lr is not None else opt.lr)
        m = override.momentum if override and override.momentum is not None else opt.momentum
        momentum.append(m if opt.name == "sgd" else 0.0)
        f = override.freeze_from if override and override.freeze_from is not None else never
        freeze.append(f)
    return LayerSettings(
        lr=np.asarray(lr, np.float32),
        momentum=np.asarray(momentum, np.float32),
        freeze_from=np.asarray(freeze, np.int64),
    )
