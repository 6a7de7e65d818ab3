"""The flat parameter vector θ: its layout (:mod:`.parameters`), sums over it (:mod:`.levels`)
and its table in words (:mod:`.describe`).
"""

from .levels import GroupSums, LevelSums
from .parameters import ParameterEntry, ParameterLayout

__all__ = ["GroupSums", "LevelSums", "ParameterEntry", "ParameterLayout"]
