"""The flag sets every kernel suite steps through (tests/test_triton_kernels.py,
tests/test_state_formats.py, tests_gpu/): per algorithm four flag sets, plain first and the
one with the most state last (SGD's last has momentum and Nesterov on), as dicts of the
suites' flag names (``wd`` the weight decay)."""

ADAM_FLAGS = [dict(amsgrad=a, decoupled=d, maximize=m, wd=w)
              for a, d, m, w in [(False, False, False, 0.0), (True, False, True, 0.1),
                                 (False, True, False, 0.1), (True, True, True, 0.05)]]
SGD_FLAGS = [dict(momentum=mo, nesterov=n, maximize=m, wd=w)
             for mo, n, m, w in [(False, False, False, 0.0), (True, False, True, 0.1),
                                 (False, False, True, 0.1), (True, True, False, 0.05)]]
RMS_FLAGS = [dict(centered=c, momentum=mo, maximize=m, wd=w)
             for c, mo, m, w in [(False, False, False, 0.0), (True, False, True, 0.1),
                                 (False, True, False, 0.05), (True, True, True, 0.1)]]
ALGOS = [("adam", ADAM_FLAGS), ("sgd", SGD_FLAGS), ("rmsprop", RMS_FLAGS)]
ALGO_IDS = [a for a, _ in ALGOS]
