"""Text, vocabularies and truncated-BPTT batching."""

from rnnlab.data.batching import StreamBatches, eval_chunks, min_tokens, split_train_val
from rnnlab.data.text import bundled_corpus_path, load_text
from rnnlab.data.vocab import Vocabulary

__all__ = [
    "StreamBatches",
    "Vocabulary",
    "bundled_corpus_path",
    "eval_chunks",
    "load_text",
    "min_tokens",
    "split_train_val",
]
