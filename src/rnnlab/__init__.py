"""rnnlab: recurrent neural networks with hand-derived backpropagation through time."""

from rnnlab.layers import GRU, LSTM, RNN

__version__ = "0.1.0"

__all__ = ["GRU", "LSTM", "RNN", "__version__"]
