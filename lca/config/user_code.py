"""The user's code that a config names as ``"module:function"`` (model and data builders)."""

from __future__ import annotations

from .schema import ModelError


def import_function(path: str, key: str):
    """``"package.module:function"`` -> the function; failures name the config ``key``."""
    import importlib
    import os
    import sys

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
