"""MobileViT (Mehta & Rastegari, ICLR 2022) for the Hugging Face ecosystem."""

from .configuration_mobilevit import VARIANTS, MobileViTConfig

__version__ = "0.1.0"

__all__ = ["MobileViTConfig", "VARIANTS", "__version__"]
