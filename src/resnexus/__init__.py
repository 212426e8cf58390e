"""resnexus: the ResNet family of image classifiers, exact and verified.

    import resnexus
    model = resnexus.create_model("resnext50_32x4d", num_classes=2)
"""

from .models import create_model, list_models, model_info

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "__version__"]
