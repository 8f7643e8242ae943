"""Recipe: swap torch.optim for fusedsched in a plain training loop.

    torch:       opt = torch.optim.AdamW(...); sched = CosineAnnealingLR(opt, T)
                 ... opt.step(); sched.step()
    fusedsched:  opt = fs.AdamW(..., schedule=S.cosine(T))
                 ... opt.step()          # the lr of this step is computed in the kernel
"""

import torch

import fusedsched as fs
from fusedsched import schedules as S


def main(steps=60, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
    opt = fs.AdamW(model.parameters(), lr=3e-2, weight_decay=0.01,
                   schedule=S.warmup(S.cosine(steps - 5), warmup_steps=5))
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, next lr {opt.get_last_lr()[0]:.2e}")
    return losses


if __name__ == "__main__":
    main()
