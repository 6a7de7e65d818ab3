"""Models: the built-in networks and user builders (:mod:`.builders`), their parameter layout
and fixed weights (:mod:`.parameters`), and the TensorFlow run-time helpers that training and
the allocation share (:mod:`.runtime`).
"""

from ..config import (
    ModelError,
    import_function,
)
from ..layout import (
    ParameterEntry,
    ParameterLayout,
)
from ..layout.describe import (
    describe_layout,
)
from .builders import (
    BN_SUFFIX,
    PositionEmbedding,
    build_model,
    build_user_model,
    from_keras_config,
)
from .parameters import (
    GROUP_SUFFIXES,
    changed_fixed_weights,
    fixed_weights,
    parameter_layout,
    restore_fixed_weights,
    same_structure,
)

__all__ = [
    "BN_SUFFIX",
    "GROUP_SUFFIXES",
    "ModelError",
    "ParameterEntry",
    "ParameterLayout",
    "PositionEmbedding",
    "build_model",
    "build_user_model",
    "changed_fixed_weights",
    "describe_layout",
    "fixed_weights",
    "from_keras_config",
    "import_function",
    "parameter_layout",
    "restore_fixed_weights",
    "same_structure",
]
