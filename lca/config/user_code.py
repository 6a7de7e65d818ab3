"""The user's code a config names (``"module:function"`` builders) or holds (a Keras model
stored as JSON): importing the one, inspecting the other without running it.
"""

from __future__ import annotations

from .schema import ModelError


def import_function(path: str, key: str):
    """``"package.module:function"`` -> the function; failures name the config ``key``."""
    import importlib
    import os
    import sys

    path = RENAMED_BUILDERS.get(path, path)  # configs of runs recorded before a move
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` does: modules beside the user count too
        sys.path.append(os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own error while importing
        raise ModelError(
            f"{key}: cannot import {module_name} ({exc.__class__.__name__}: {exc}); "
            "is it on PYTHONPATH or in the current directory?"
        ) from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ModelError(f"{key}: {module_name} has no {attr}")
    if not callable(obj):
        raise ModelError(f"{key}: {path} is not callable")
    return obj


KERAS_CONFIG_BUILDER = "lca.tensorflow.models:from_keras_config"  # a model stored as Keras JSON
#: lca's own builders that moved, as older runs' configs name them -> where they are now
RENAMED_BUILDERS = {"lca.models:from_keras_config": KERAS_CONFIG_BUILDER}


def holds_bytecode(node) -> bool:
    """Whether a Keras config holds a serialized Python function (``__lambda__``)."""
    if isinstance(node, dict):
        if node.get("class_name") == "__lambda__":
            return True
        return any(holds_bytecode(v) for v in node.values())
    if isinstance(node, list):
        return any(holds_bytecode(v) for v in node)
    return False


def custom_classes(node) -> set[str]:
    """Classes of a Keras config that do not come from Keras itself."""
    found: set[str] = set()
    if isinstance(node, dict):
        module = node.get("module")
        if isinstance(module, str) and "class_name" in node and module.split(".")[0] != "keras":
            found.add(f"{module}.{node['class_name']}")
        if node.get("registered_name") and "class_name" in node and module is None:
            found.add(str(node["registered_name"]))
        for value in node.values():
            found |= custom_classes(value)
    elif isinstance(node, list):
        for value in node:
            found |= custom_classes(value)
    return found
