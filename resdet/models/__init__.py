"""ResNet backbones (ImageNet and CIFAR families), the classifier wrapper and detectors."""

from resdet.models.api import ModelInfo, create_model, list_models, model_info

__all__ = ["ModelInfo", "create_model", "list_models", "model_info"]
