"""What the Numba kernels of all algorithms share, one file per concern; the algorithm
modules import it from here:

* ``_llvm.py``: raw pointers and LLVM intrinsics (``address_as_pointer``, ``f64_at``,
  ``fma``, ``sqrt``, ``lerp``) and ``JIT``, the compile options;
* ``_sqrt.py``: the square-root modes (IEEE, or torch's MKL sqrt) and ``vsqrt``;
* ``_half.py``: float16 / bfloat16 <-> float32 conversions;
* ``_elements.py``: element access in the math type (``load``, ``store``, ``ct``,
  ``grad_at``, ``view``);
* ``_walk.py``: the chunked walk over a tensor list (``make_walk``, ``SERIAL_MAX``,
  ``chunk_size``) and the counters;
* ``_state.py``: the state formats (bfloat16 with stochastic rounding, 8-bit blocks):
  the random bits and codes, and the state handles (``state_at``, ``blocking``,
  ``block_range``, ``at_block``, ``flush``) through which ``load``/``store`` reach them;
* ``_host.py``: the host side of a call: storage markers, packing and checks of the address
  table, the hyperparameter buffer, the schedule/position/AMP arguments, the thread pool.

Storage types inside the kernels (the *marker* is a zero scalar of that type, passed so that
Numba specialises the kernel per storage dtype):

* float32 -> float32, float64 -> float64 (math in the same type);
* float16 -> uint16 bit patterns, bfloat16 -> int16 bit patterns (the two 16-bit formats
  are told apart by signedness only); math in float32, conversions round to nearest even
  and keep inf, NaN and subnormals.

Nothing is compiled at import: every kernel is a lazy, cached (``cache=True``) dispatcher.
"""

from ._elements import ct, grad_at, load, store, view
from ._half import bf16_to_float, float_to_bf16, float_to_half, half_to_float
from ._host import (amp_args, check_counter, empty_step, format_args, hyper_buffer, marker_of,
                    pack, program_args, setup_threads, timed, use_pool)
from ._llvm import JIT, address_as_pointer, f64_at, fma, lerp, sqrt
from ._state import FORMAT_MARKERS, at_block, block_range, blocking, flush, state_at
from ._sqrt import (BLOCK, SQRT_MODES, set_sqrt_mode, sqrt_fn, sqrt_fns, sqrt_mode, tmp,
                    vsqrt)
from ._walk import (ALIGN, CHUNK, PJIT, SERIAL_MAX, chunk_size, finish, first_tensor,
                    make_walk, n_chunks, position_at, read_steps)

__all__ = ["SERIAL_MAX", "CHUNK", "ALIGN", "JIT", "PJIT", "address_as_pointer", "f64_at",
           "fma", "sqrt", "lerp", "BLOCK", "SQRT_MODES", "vsqrt", "sqrt_fn", "sqrt_fns",
           "set_sqrt_mode", "sqrt_mode", "tmp", "half_to_float", "float_to_half",
           "bf16_to_float", "float_to_bf16", "load", "store", "ct", "grad_at", "view",
           "n_chunks", "chunk_size", "first_tensor", "make_walk", "position_at", "use_pool",
           "empty_step", "read_steps", "timed", "finish", "setup_threads", "marker_of",
           "hyper_buffer", "pack", "check_counter", "program_args", "amp_args",
           "format_args", "FORMAT_MARKERS", "state_at", "blocking", "block_range",
           "at_block", "flush"]
