"""``opt.step()`` inside ``torch.compile`` on CUDA (compiled Triton kernels): fullgraph, no
recompile while the schedule advances, bit-identical to an eager twin, and
``mode="reduce-overhead"`` (Inductor's CUDA graphs) around a whole train step."""

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S

DEV = "cuda"
OPTIMIZERS = {
    "SGD": (fs.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "RMSprop": (fs.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    "AdamW": (fs.AdamW, dict(lr=0.01, amsgrad=True)),
}


def _twins(cls, kw, schedule):
    gen = torch.Generator(device=DEV).manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(s, generator=gen, device=DEV))
         for s in ((33, 7), (1000,), (4, 513))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    return a, cls(a, **kw, schedule=schedule), b, cls(b, **kw, schedule=schedule), gen


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fullgraph_step_bit_identical_and_no_recompile(name):
    cls, kw = OPTIMIZERS[name]
    pa, oa, pb, ob, gen = _twins(cls, kw, S.warmup(S.cosine(200), 10))
    step = torch.compile(oa.step, fullgraph=True)
    for i in range(60):
        for p, q in zip(pa, pb):
            g = torch.randn(p.shape, generator=gen, device=DEV)
            p.grad, q.grad = g.clone(), g.clone()
        if i == 2:
            torch._dynamo.config.error_on_recompile = True
        try:
            step()
        finally:
            torch._dynamo.config.error_on_recompile = False
        ob.step()
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)
    assert oa.param_groups[0]["schedule_position"].item() == 60


def test_reduce_overhead_train_step_close_to_eager():
    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(),  # noqa: E731
                                       torch.nn.Linear(128, 10)).to(DEV)
    model, twin = make(), make()
    twin.load_state_dict(model.state_dict())
    sched = S.one_cycle(total_steps=100)
    oa = fs.AdamW(model.parameters(), lr=1e-2, schedule=sched)
    ob = fs.AdamW(twin.parameters(), lr=1e-2, schedule=sched)
    x = torch.randn(256, 64, device=DEV)
    y = torch.randint(0, 10, (256,), device=DEV)

    def train(m, o):
        o.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        o.step()
        return loss.detach()

    compiled = torch.compile(train, mode="reduce-overhead")
    for _ in range(30):
        la = compiled(model, oa)
        lb = train(twin, ob)
    torch.cuda.synchronize()
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert oa.param_groups[0]["schedule_position"].item() == 30
