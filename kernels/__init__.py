"""Kernel backends of fusedsched (installed as ``fusedsched.kernels``).

Three backends, one folder each, one file per algorithm inside, plus one schedule
evaluator per backend (``schedule.py``):

* ``reference``: pure torch; the readable specification and the fallback for any device.
* ``numba``: parallel CPU kernels.
* ``triton``: GPU kernels (also run on CPU tensors under ``TRITON_INTERPRET=1``).

Calling convention (the same for every backend; ``fusedsched.optim`` is the only caller)
----------------------------------------------------------------------------------------
Each algorithm module exposes one function that applies one update to a list of tensors
(one parameter group, or the part of it with one dtype):

``sgd.sgd_step(params, grads, momentum_buffers, steps, *, lr, momentum, dampening,
weight_decay, nesterov, maximize, schedule, position, grad_scale, found_inf)``

``rmsprop.rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *,
lr, alpha, eps, weight_decay, momentum, centered, maximize, schedule, position,
grad_scale, found_inf)``

``adam.adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr,
beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize, schedule,
position, grad_scale, found_inf)``

The keywords after the tensor lists are the algorithm's hyperparameters as ``ops.SIGNATURES``
declares them (names, order, kinds), the one declaration that the operator schema, the
packing of a call and the compiled kernels' float64 hyperparameter buffer (its ``HP_*``
slots, ``Signature.slot``) all follow; the compiled backends take them as ``**hyper``.

* ``params``, ``grads`` and the state lists: contiguous real tensors, all of one device and
  one dtype (float16, bfloat16, float32 or float64); numel may be 0. (The caller stages
  non-contiguous tensors and views complex ones as real.) State has the params' dtype.
* ``momentum_buffers`` is None when the momentum path is off (momentum == 0 and the
  schedule does not cycle momentum); ``grad_avgs`` is None unless centered;
  ``max_exp_avg_sqs`` is None unless amsgrad.
* ``steps``: one 0-dim float64 tensor per parameter on the params' device, the number of
  updates applied to it before this one. The update uses ``step + 1`` (bias corrections;
  SGD and RMSprop initialise their momentum buffer when ``step == 0``: SGD copies the
  gradient into it as torch does on its first step). The backend increments every step
  unless ``found_inf`` is nonzero.
* ``lr``, ``momentum``, ``beta1``, ...: Python floats, or 0-dim tensors (lr, momentum and
  betas; read on the device, never with a host sync on an accelerator).
* ``schedule``: a ``kernels.schedule_encoding`` program, a float64 tensor of shape
  ``(n_nodes, NODE_SIZE)`` on the params' device.
* ``position``: 0-dim float64 tensor on the params' device, the schedule position ``t`` of
  this update. The update uses ``lr * f(t)``; when the schedule cycles momentum, its
  momentum replaces ``momentum`` (SGD, RMSprop) or ``beta1`` (Adam). The backend
  increments ``position`` by 1 after the update, also when ``found_inf`` is nonzero.
  Several calls in one ``step()`` (a group split by dtype) pass ``advance_position=False``
  to all but the last.
* ``grad_scale``: None or a 0-dim float32 tensor: gradients are divided by it (and the
  unscaled gradient is written back, as torch's fused kernels do).
* ``found_inf``: None or a 0-dim float32 tensor: when nonzero, nothing is written (no
  parameter, state, or step), only ``position`` advances.

Math: float32 for float16/bfloat16/float32 tensors, float64 for float64 tensors; the
per-update scalars (schedule factor, bias corrections, step size) in float64. Operation
order follows torch's single-tensor implementations (torch/optim/{sgd,rmsprop,adam}.py).
"""
