"""Optimizers: one file per algorithm, the shared machinery in _base.py."""

from ._precision import float32_state_dict
from .adam import Adam, AdamW
from .rmsprop import RMSprop
from .sgd import SGD, Momentum

__all__ = ["SGD", "Momentum", "RMSprop", "Adam", "AdamW", "float32_state_dict"]
