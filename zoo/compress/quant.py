"""The quantization interface over ``torch.ao.quantization`` under its old name.

The code is ``zoo/quant.py``: loading a quantized checkpoint (``zoo.checkpoint``) rebuilds its
structure with it, and the zoo core never imports ``zoo.compress``. This module re-exports it.
"""
from zoo.quant import *  # noqa: F401,F403
from zoo.quant import PackedInt4Model, pack_int4, structure, unpack_int4  # noqa: F401
