"""Operators. One folder per op: functional (public), reference (oracle), backends, dispatch."""
