"""rnnlab: recurrent neural networks with hand-derived backpropagation through time."""

from rnnlab.layers import GRU, LSTM, RNN, JordanRNN, PascanuRNN

__version__ = "0.1.0"

__all__ = ["GRU", "LSTM", "RNN", "JordanRNN", "PascanuRNN", "__version__"]
