"""Models of the benchmarks: deep autoencoders, tanh RNNs, MLPs, and their initializations.

Every model's ``forward`` returns the output layer's pre-nonlinearity (logits), for matching
losses; ``output_nonlinearity(z)`` applies the output nonlinearity.
"""

from hessfree.models import init
from hessfree.models.autoencoder import (
    DeepAutoencoder,
    curves_autoencoder,
    faces_autoencoder,
    mnist_autoencoder,
    reconstruction_error,
)
from hessfree.models.gpt import GPT, char_gpt
from hessfree.models.init import esn_init_, sparse_init_
from hessfree.models.mlp import MLP, FeedForward
from hessfree.models.rnn import TanhRNN

__all__ = [
    "DeepAutoencoder",
    "FeedForward",
    "GPT",
    "MLP",
    "TanhRNN",
    "char_gpt",
    "curves_autoencoder",
    "esn_init_",
    "faces_autoencoder",
    "init",
    "mnist_autoencoder",
    "reconstruction_error",
    "sparse_init_",
]
