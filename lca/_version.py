"""The version of lca: one constant that every layer may read without importing the package."""

__version__ = "0.1.0"
