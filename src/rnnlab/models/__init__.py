"""Task models built on the recurrent layers."""

from rnnlab.models.language_model import CELLS, LanguageModel, ModelConfig

__all__ = ["CELLS", "LanguageModel", "ModelConfig"]
