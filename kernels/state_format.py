"""The storage formats of optimizer state, shared by every kernel backend.

A kernel call's ``state_format`` says how its state tensors (``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``momentum_buffer``, ``square_avg``, ``grad_avg``) are stored. The math
is the same in every format (float32; float64 for float64 parameters): a state element is
loaded into the math type, updated, and the update of the parameter uses the new value
*before* it is rounded for storage; only the stored copy is rounded.

``"native"``
    The tensors' own dtype (the parameter's, or float32 with ``master_weights``), rounded
    to nearest, as torch.optim stores it.

``"bfloat16"``
    bfloat16 tensors, rounded *stochastically* from float32: the value's float32 bits plus a
    random integer in [0, 2**16), then the low 16 bits dropped. A bfloat16 ``exp_avg_sq``
    rounded to nearest stalls: ``beta2 * v + (1 - beta2) * g**2`` with beta2 = 0.999 moves v
    by 0.1% while half an ulp of bfloat16 is 0.39%, so once ``g**2`` is within a factor of
    about 4 of v the update rounds back to v (measured: ``bench/results/state_dtype``).
    Stochastic rounding is unbiased: v moves by 0.1% on average. (Zamirai et al. 2020,
    "Revisiting BFloat16 Training", arXiv:2010.06192.) Values exactly representable in
    bfloat16 are stored unchanged; a NaN is stored as the quiet NaN ``BF16_NAN`` (0x7FC0,
    as torch's conversion stores it): adding random bits to a NaN's payload could carry
    into the sign (0xFFFFFFFF, which torch's CPU ``maximum`` produces, or CUDA's
    0x7FFFFFFF would round to a zero).

``"8bit"``
    Blockwise dynamic quantization (after Dettmers et al. 2021, "8-bit Optimizers via
    Block-wise Quantization", arXiv:2110.02861). A state tensor is a uint8 tensor of the
    parameter's shape (one code per element); its *scales* are a float32 tensor of
    ``ceil(numel / BLOCK_SIZE)`` elements, one per block of ``BLOCK_SIZE`` consecutive
    elements of the tensor (the last block may be short). Element ``j`` holds
    ``magnitude(code[j]) * scale[j // BLOCK_SIZE]``. The map of a code to its magnitude is
    a small floating-point format: 3 mantissa bits (relative spacing 1/8 .. 1/16) and an
    exponent:

    * signed states (``exp_avg``, ``momentum_buffer``, ``grad_avg``): bit 7 the sign,
      bits 6..3 the exponent ``e`` (4 bits), bits 2..0 the mantissa ``f``;
    * non-negative states (``exp_avg_sq``, ``max_exp_avg_sq``, ``square_avg``): bits 7..3
      the exponent (5 bits), bits 2..0 the mantissa. The second moment spans the square of
      the gradients' range: 32 binades (9.6 decades) where the first moment gets 16.

    With ``E`` exponent bits and ``BIAS = 2**E - 1``: ``magnitude = (1 + f/8) * 2**(e -
    BIAS)`` for ``e >= 1`` and ``f/8 * 2**(1 - BIAS)`` for ``e == 0`` (subnormal, down to
    0). The largest magnitude is ``MAX_MAGNITUDE`` = 1.875 (top code), and a block's scale
    is ``absmax / MAX_MAGNITUDE`` (float32 division), where absmax is the largest absolute
    new value in the block: the block's largest element maps to the top code.

    Encoding element ``x`` (float32) of a block with scale ``s``: ``inv = MAX_MAGNITUDE /
    absmax`` (0 when absmax is 0), ``y = min(|x| * inv, MAX_MAGNITUDE)``; below the
    smallest normal magnitude ``T = 2**(1 - BIAS)`` the value is shifted to ``y + T`` (the
    binade whose 3-bit spacing is the subnormal spacing); then the float32 bits of that
    value plus a random integer in [0, 2**20) are shifted right by 20 (exponent and 3
    mantissa bits), the exponent rebased (``- (127 - BIAS) << 3``, and ``- 8`` for a
    shifted value) and clamped to the top code. A non-negative state never stores a
    positive value as 0 (code 1 at least): a zero second moment under a nonzero first
    moment would divide by ``eps`` alone. Stochastic rounding makes the quantization
    unbiased, as for bfloat16. Zeros stay exactly zero; a non-finite value makes its
    block's scale non-finite (the block decodes to NaN).

    ``BLOCK_SIZE`` = 256: the published method's block size for 8-bit state (bitsandbytes
    blocksize 256); state memory is ``1 + 4/256`` bytes per element per moment, 0.254x of
    float32. All tensors are quantized, small ones too: one kernel call steps every
    tensor of a group, and a 256-element block of a small tensor has the same precision as
    any other (the quality table in the README has the measurement).

Random bits. Every backend draws the same bits, from the element's own value: ``h =
bits(x) ^ ((step * STEP_MULTIPLIER + salt * SALT_MULTIPLIER) mod 2**32)``, then the
``mix32`` below, where ``bits(x)`` are the float32 bits of the new (unrounded) value,
``step`` the parameter's ``step`` after this update and ``salt`` the state's index in the
kernel's state order (``ops.SIGNATURES``). Nothing depends on where the element sits in
memory or in which chunk or program it is computed, so flat storage (``flat=True``),
every chunking of the Numba walk and every Triton block size give the same bits, and a run
resumed from a state_dict draws what the uninterrupted run draws. The multipliers are odd
and below 2**31, so every product fits in a signed 64-bit integer (the reference computes
in int64 with masks).
"""

FORMATS = ("native", "bfloat16", "8bit")

BLOCK_SIZE = 256            # elements per 8-bit block (one float32 scale each)
MANTISSA_BITS = 3
MAX_MAGNITUDE = 1.875       # (1 + 7/8) * 2**0: the top code's magnitude
SIGNED_EXPONENT_BITS = 4
UNSIGNED_EXPONENT_BITS = 5

MASK32 = 0xFFFFFFFF
STEP_MULTIPLIER = 0x61C88647
SALT_MULTIPLIER = 0x1B873593
MIX_MULTIPLIER_1 = 0x7FEB352D
MIX_MULTIPLIER_2 = 0x2C1B3C6D
BF16_RANDOM_MASK = 0xFFFF                       # the 16 bits bfloat16 drops
BF16_NAN = 0x7FC0                               # bfloat16's quiet NaN
CODE_RANDOM_MASK = (1 << (23 - MANTISSA_BITS)) - 1   # the 20 bits the 8-bit code drops


def exponent_bits(signed):
    """The exponent width of a signed (4) or non-negative (5) state's code."""
    return SIGNED_EXPONENT_BITS if signed else UNSIGNED_EXPONENT_BITS


def bias(signed):
    """``2**E - 1``: the exponent bias that puts the top binade at [1, 2)."""
    return (1 << exponent_bits(signed)) - 1


def top_code(signed):
    """The largest magnitude code: 127 (signed, bit 7 is the sign) or 255."""
    return (1 << (exponent_bits(signed) + MANTISSA_BITS)) - 1


def smallest_normal(signed):
    """``T = 2**(1 - BIAS)``: the smallest magnitude with ``e >= 1``."""
    return 2.0 ** (1 - bias(signed))


def rebase(signed):
    """``(127 - BIAS) << MANTISSA_BITS``: subtracted from (float32 bits >> 20) to get the
    code of a magnitude in [T, 2)."""
    return (127 - bias(signed)) << MANTISSA_BITS


def n_blocks(numel):
    """The number of 8-bit blocks (scales) of a tensor of ``numel`` elements."""
    return -(-numel // BLOCK_SIZE)


def step_mix(step, salt):
    """The per-tensor, per-state part of the random bits' seed (a Python int)."""
    return (int(step) * STEP_MULTIPLIER + salt * SALT_MULTIPLIER) & MASK32


def mix32(h):
    """The integer mix of the random bits, on a Python int in [0, 2**32) (the backends
    run the same steps on their integer types)."""
    h ^= h >> 16
    h = (h * MIX_MULTIPLIER_1) & MASK32
    h ^= h >> 15
    h = (h * MIX_MULTIPLIER_2) & MASK32
    h ^= h >> 16
    return h
