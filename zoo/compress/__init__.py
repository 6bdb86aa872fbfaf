"""Compressed VGG variants: structured/unstructured pruning, int8/int4 quantization, resolution.

Their arch kinds and builders are in ``zoo.compressed_archs`` (with the module structures they
build, ``zoo.quant`` and ``zoo.resolution``, below this package: loading a checkpoint never
imports ``zoo.compress``); ``zoo.arch_kinds`` lists them in
the architecture table, so ``load_model`` rebuilds any variant from its checkpoint. Importing
this package registers nothing.
"""
