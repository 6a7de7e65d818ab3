"""Loss Change Allocation."""

__version__ = "0.1.0"
