"""DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism): each rank steps its
local shards, with the state kept as DTensors placed like their parameters."""

import contextlib

from ._precision import SCALE


def _is_dtensor(tensor):
    # torch.distributed.tensor imports lazily: most runs never meet a DTensor.
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "to_local")


@contextlib.contextmanager
def _local_shards(opt, params):
    """Give ``_launch`` plain tensors for DTensor parameters (FSDP2's ``fully_shard``,
    tensor parallelism): each rank updates its local shard, one kernel call per group.

    Yields the list to launch with: plain parameters as they are, each DTensor ``p`` as
    ``p.to_local()`` (a view of its shard) whose ``grad`` is the grad's local view, and
    ``opt.state`` is swapped meanwhile for a dict from those views to the local views of
    ``p``'s state. State that the launch creates (zeros like the local shard) is stored
    back as DTensors placed like ``p``, as torch keeps it; ``step`` stays a plain tensor."""
    if not any(_is_dtensor(p) for p in params):
        yield params
        return
    from torch.distributed.tensor import DTensor

    real = opt.state
    local_params, local_state = [], {}
    for p in params:
        if not _is_dtensor(p):
            local_params.append(p)
            local_state[p] = real[p]
            continue
        local = p.to_local()
        local.grad = p.grad.to_local()
        local_state[local] = {k: v.to_local() if _is_dtensor(v) else v
                              for k, v in real[p].items()}
        local_params.append(local)
    opt.state = local_state
    try:
        yield local_params
    finally:
        opt.state = real
        for p, local in zip(params, local_params):
            if local is p:
                continue
            state = real[p]
            for key, value in local_state[local].items():
                if key not in state:
                    # the step and 8-bit block scales are the rank's own plain tensors
                    state[key] = (value if key == "step" or key.endswith(SCALE)
                                  or value.shape != local.shape else
                                  DTensor.from_local(value, p.device_mesh, p.placements,
                                                     shape=p.shape, stride=p.stride()))
            local.grad = None
