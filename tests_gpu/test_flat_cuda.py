"""Flat storage (``flat=True``) on CUDA with the compiled Triton kernels: bit-identical to
``flat=False`` twins (the same kernels on the same elements), one kernel row per run."""

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S
from fusedsched.cli.optim_db import OPTIMIZERS


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(33, 64), torch.nn.GELU(),
                               torch.nn.Linear(64, 7)).cuda()


def _twins(cls, **kw):
    a, b = _model(), _model()
    sched = S.warmup(S.cosine(100), 5)
    return (a, cls(a.parameters(), schedule=sched, flat=True, **kw),
            b, cls(b.parameters(), schedule=sched, **kw))


def _assert_same(ma, oa, mb, ob):
    for x, y in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(x, y)
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sb:
        for key in sb[i]:
            assert torch.equal(sa[i][key], sb[i][key]), (i, key)


@pytest.mark.parametrize("cls", [info.cls for info in OPTIMIZERS.values()])
def test_training_loop_matches_flat_false(cls):
    ma, oa, mb, ob = _twins(cls, lr=1e-2)
    x = torch.randn(16, 33, device="cuda")
    for k in range(6):
        for m, o in ((ma, oa), (mb, ob)):
            o.zero_grad(set_to_none=True)
            if k == 2:
                m[0](x).pow(2).mean().backward()        # some grads left None
            else:
                m(x).pow(2).mean().backward()
            if k == 4:
                m[2].bias.grad = torch.full_like(m[2].bias, 0.5)
            o.step()
        _assert_same(ma, oa, mb, ob)
    (fg,) = oa._flat_groups.values()
    (bank,) = fg.banks
    assert bank.device.type == "cuda" and bank.buf.data_ptr() % 16 == 0


def test_grad_scaler_matches_flat_false():
    ma, oa, mb, ob = _twins(fs.Adam, lr=1e-2, max_grad_norm=0.1)
    x = torch.randn(16, 33, device="cuda")
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0 ** 8) for _ in range(2)]
    for k in range(5):
        for (m, o), scaler in zip(((ma, oa), (mb, ob)), scalers):
            o.zero_grad(set_to_none=True)
            loss = m(x).pow(2).mean() * (float("inf") if k == 1 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(o)
            scaler.update()
        _assert_same(ma, oa, mb, ob)
