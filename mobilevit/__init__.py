"""MobileViT (Mehta & Rastegari, ICLR 2022) for the Hugging Face ecosystem."""

from .configuration_mobilevit import VARIANTS, MobileViTConfig
from .image_processing_mobilevit import MobileViTImageProcessor

__version__ = "0.1.0"

__all__ = ["MobileViTConfig", "MobileViTImageProcessor", "VARIANTS", "__version__"]
