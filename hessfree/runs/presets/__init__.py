"""The built-in experiments, with the papers' settings (``docs/references.md``, cited per value).

:data:`BUILTIN` maps each name to a zero-argument factory; the registry
(:mod:`hessfree.runs.experiments`) starts from it.
"""

from hessfree.runs.presets.autoencoders import AUTOENCODERS, AutoencoderData
from hessfree.runs.presets.rnn import RNN_TASKS, RNNData
from hessfree.runs.presets.small import SMALL

BUILTIN = {**AUTOENCODERS, **RNN_TASKS, **SMALL}

__all__ = ["BUILTIN", "AutoencoderData", "RNNData"]
