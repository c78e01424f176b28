"""The fused InstanceNorm + LeakyReLU op: ``instance_norm_leaky_relu`` (see functional.py)."""
from .functional import BACKENDS, instance_norm_leaky_relu, instance_norm_leaky_relu_, needs_grad
from .reference import instance_norm_leaky_relu_reference

__all__ = ["BACKENDS", "instance_norm_leaky_relu", "instance_norm_leaky_relu_", "instance_norm_leaky_relu_reference",
           "needs_grad"]
