"""The flat parameter vector θ: its layout (`parameters`), sums over it (`levels`)
and its table in words (`describe`).
"""

from .levels import GroupSums, LevelSums
from .parameters import ParameterEntry, ParameterLayout

__all__ = ["GroupSums", "LevelSums", "ParameterEntry", "ParameterLayout"]
