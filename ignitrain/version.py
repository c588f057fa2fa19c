"""The package version, in a module of its own so that any module can read it at import
time without importing the whole package (``ignitrain/__init__`` imports the flavors)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
