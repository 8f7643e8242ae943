"""Step hooks and the profiler range: torch's semantics, whichever way step() is entered.

``FusedOptimizer.step`` runs torch's own step wrapper (``Optimizer.profile_hook_step``)
only when it has work to do; these tests pin that it then does exactly what torch's
optimizers do, once per step."""

import pytest
import torch
from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                   register_optimizer_step_pre_hook)

import fusedsched as fs


def _opt(cls=fs.Adam):
    w = torch.nn.Parameter(torch.ones(8, dtype=torch.float64))
    w.grad = torch.full_like(w, 0.5)
    return cls([w], lr=0.1), w


def test_instance_hooks_run_once_in_order():
    opt, _ = _opt()
    seen = []
    pre = opt.register_step_pre_hook(lambda o, a, k: seen.append(("pre", o is opt)))
    post = opt.register_step_post_hook(lambda o, a, k: seen.append(("post", o is opt)))
    opt.step()
    assert seen == [("pre", True), ("post", True)]
    pre.remove()
    post.remove()
    opt.step()
    assert seen == [("pre", True), ("post", True)]


def test_global_hooks_run_once():
    opt, _ = _opt()
    seen = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: seen.append("pre")),
               register_optimizer_step_post_hook(lambda o, a, k: seen.append("post"))]
    try:
        opt.step()
    finally:
        for h in handles:
            h.remove()
    assert seen == ["pre", "post"]


def test_pre_hook_may_replace_the_closure():
    opt, _ = _opt()
    calls = []

    def closure():
        calls.append(1)
        return torch.tensor(3.0)

    opt.register_step_pre_hook(lambda o, a, k: ((o,), {"closure": closure}))
    assert opt.step().item() == 3.0 and calls == [1]


def test_pre_hook_bad_result_raises_as_torch():
    opt, w = _opt()
    before = w.detach().clone()
    opt.register_step_pre_hook(lambda o, a, k: 42)
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()
    assert torch.equal(w.detach(), before)


def test_profiler_range_has_torchs_name():
    opt, _ = _opt(fs.AdamW)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    names = [e.name for e in prof.events()]
    assert names.count("Optimizer.step#AdamW.step") == 1


def test_subclass_overriding_step_runs_hooks_once():
    class Logged(fs.Adam):
        def step(self, closure=None):
            return super().step(closure)

    opt, w = _opt(Logged)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    opt.step()
    assert seen == ["pre", "post"]
    # and the update happened, as with the class itself
    ref, r = _opt()
    ref.step()
    assert torch.equal(w.detach(), r.detach())


def test_hooked_and_unhooked_steps_are_the_same_update():
    a, wa = _opt()
    b, wb = _opt()
    b.register_step_pre_hook(lambda o, a, k: None)
    for _ in range(3):
        a.step()
        b.step()
    assert torch.equal(wa.detach(), wb.detach())
    assert torch.equal(a.state[wa]["exp_avg"], b.state[wb]["exp_avg"])


def test_hooks_run_under_torch_compile():
    opt, w = _opt()
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    torch.compile(lambda: opt.step())()
    assert seen == ["pre"]
