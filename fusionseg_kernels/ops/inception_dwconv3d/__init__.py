from .dispatch import BACKENDS, BackendUnavailableError, clear_backend_cache, explain_backend
from .functional import inception_dwconv3d
from .reference import inception_dwconv3d_reference

__all__ = ["BACKENDS", "BackendUnavailableError", "clear_backend_cache", "explain_backend",
           "inception_dwconv3d", "inception_dwconv3d_reference"]
