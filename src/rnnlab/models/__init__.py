"""Task models built on the recurrent layers: the four wirings of seed 003 and a language model.

- many-to-one: :class:`SequenceClassifier`, :class:`SequenceRegressor` (:class:`SequenceEncoder`
  is their shared encoder, with ``encode()``);
- many-to-many, aligned: :class:`SequenceTagger`;
- one-to-many: :class:`ConditionalGenerator`;
- encoder-decoder: :class:`Seq2Seq`, with optional additive or multiplicative attention;
- next-token prediction: :class:`LanguageModel`.

Each model is built from a frozen config dataclass of the same name ending in ``Config``.
"""

from rnnlab.models.classifier import (
    ClassifierConfig,
    EncoderConfig,
    RegressorConfig,
    SequenceClassifier,
    SequenceEncoder,
    SequenceRegressor,
)
from rnnlab.models.generator import ConditionalGenerator, GeneratorConfig
from rnnlab.models.language_model import CELLS, LanguageModel, ModelConfig
from rnnlab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from rnnlab.models.tagger import SequenceTagger, TaggerConfig

__all__ = [
    "CELLS",
    "ClassifierConfig",
    "ConditionalGenerator",
    "EncoderConfig",
    "GeneratorConfig",
    "LanguageModel",
    "ModelConfig",
    "RegressorConfig",
    "Seq2Seq",
    "Seq2SeqConfig",
    "SequenceClassifier",
    "SequenceEncoder",
    "SequenceRegressor",
    "SequenceTagger",
    "TaggerConfig",
]
