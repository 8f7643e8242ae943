"""``evaluator[(n,)](program, n_nodes, ts, out)``: the Triton schedule evaluator
(``kernels/triton/schedule.evaluate``) at ``n`` positions ``ts``, one program each, storing
(factor, momentum, has_momentum) rows into ``out``. Imported only where triton is wanted
(TRITON_INTERPRET set before, tests/conftest.py)."""

import triton
import triton.language as tl

from fusedsched.kernels.triton.schedule import evaluate


@triton.jit
def evaluator(prog_ptr, n_nodes, ts_ptr, out_ptr):
    i = tl.program_id(0)
    f, m, h = evaluate(prog_ptr, n_nodes, tl.load(ts_ptr + i))
    tl.store(out_ptr + 3 * i, f)
    tl.store(out_ptr + 3 * i + 1, m)
    tl.store(out_ptr + 3 * i + 2, h)
