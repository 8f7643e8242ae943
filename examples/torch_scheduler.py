"""Recipe: a torch.optim.lr_scheduler on a fusedsched optimizer.

Any torch scheduler works unchanged: it writes group["lr"] (OneCycleLR and CyclicLR also
write momentum / betas) and the next step() reads it. With ``schedule=None`` (the default
constant 1) the torch scheduler alone sets the lr. If you give both a built-in schedule and
a torch scheduler, they multiply: the k-th update uses ``group["lr"] * f(k - 1)`` where the
torch scheduler sets ``group["lr"]``.

A tensor lr (``lr=torch.tensor(0.01)``) is updated in place by torch's schedulers and read
by the kernel on the device: no host sync.
"""

import torch

import fusedsched as fs


def main(steps=50, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(128, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    model = torch.nn.Linear(4, 1)
    opt = fs.SGD(model.parameters(), lr=0.1, momentum=0.9)      # no built-in schedule
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()            # writes group["lr"] and group["momentum"] for the next step
        losses.append(loss.item())
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.6f}, lr {opt.param_groups[0]['lr']:.2e}")
    return losses


if __name__ == "__main__":
    main()
