"""The model zoo: data, architectures, training, compression, profiling, checkpoints."""
from zoo.registry import create_model, list_models, model_arch, register_model
from zoo.vgg import VGG, VGGArch

__all__ = ["create_model", "list_models", "model_arch", "register_model", "VGG", "VGGArch"]
