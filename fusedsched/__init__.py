"""fusedsched: fused optimizers for PyTorch with the learning-rate schedule computed inside
the kernel (Triton on GPUs, Numba on CPUs, pure torch elsewhere).

>>> import fusedsched as fs
>>> from fusedsched import schedules as S
>>> opt = fs.AdamW(model.parameters(), lr=3e-4,
...                schedule=S.warmup(S.cosine(total_steps=9000), warmup_steps=1000))
"""

from . import schedules
from .optim import SGD, Adam, AdamW, Momentum, RMSprop

__all__ = ["SGD", "Momentum", "RMSprop", "Adam", "AdamW", "schedules"]
__version__ = "0.1.0"
