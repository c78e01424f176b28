"""The package version, in one place (pyproject.toml reads it too). Imports nothing."""
__version__ = "0.1.0"
