"""Compressed VGG variants: structured/unstructured pruning, int8/int4 quantization, resolution.

Importing this package registers the compressed arch kinds with ``zoo.checkpoint`` so
``load_model`` rebuilds any variant from its checkpoint.
"""
from zoo.compress.archs import KINDS, register_all

register_all()

__all__ = ["KINDS"]
