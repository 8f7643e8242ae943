"""bf16 training aids: how far bf16 training ends from fp32 training, with and without them.

The digits MLP of ``fusedsched demo`` (same data, model and initialisation), trained
full-batch with fusedsched.AdamW and a warmup + cosine schedule four times:

* fp32: float32 parameters (the reference);
* bf16: bfloat16 parameters, plain (each update rounded to nearest into bf16);
* bf16 + master_weights: float32 master copy in the optimizer;
* bf16 + stochastic_rounding: updates rounded stochastically into bf16.

The bf16 runs compute the forward and backward in bf16 too (the inputs are cast), so they
differ from fp32 also by the arithmetic, which no optimizer aid removes; what the aids
remove is the loss of small updates when they are rounded into bf16 weights (late in the
cosine decay the update is far below half a bf16 ulp of the weight and plain bf16 stops
moving). Printed per run: final train loss, its gap to fp32, test accuracy, and the
relative L2 distance of all parameters to the fp32 run's.
"""

import torch
import torch.nn.functional as F

import fusedsched as fs
from fusedsched.cli import demo
from fusedsched import schedules as S

RUNS = {
    "fp32": (torch.float32, {}),
    "bf16": (torch.bfloat16, {}),
    "bf16 + master_weights": (torch.bfloat16, {"master_weights": True}),
    "bf16 + stochastic_rounding": (torch.bfloat16, {"stochastic_rounding": True}),
}


def train(dtype, aids, data, steps, seed, lr):
    X_tr, y_tr, X_te, y_te = (t.to(dtype) if t.is_floating_point() else t for t in data)
    model = demo.make_model(seed).to(dtype)
    warmup = steps // 10
    opt = fs.AdamW(model.parameters(), lr=lr, weight_decay=demo.WEIGHT_DECAY,
                   schedule=S.warmup(S.cosine(steps - warmup), warmup_steps=warmup), **aids)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(X_tr).float(), y_tr)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = F.cross_entropy(model(X_tr).float(), y_tr).item()
        acc = (model(X_te).argmax(1) == y_te).float().mean().item()
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    return dict(losses=losses, final_loss=final, test_acc=acc, flat=flat)


def main(steps=400, seed=0, lr=3e-3, verbose=True):
    """Train the four runs; return {name: {final_loss, loss_gap, param_dist, test_acc}}."""
    data = demo.load_data()
    runs = {name: train(dtype, aids, data, steps, seed, lr)
            for name, (dtype, aids) in RUNS.items()}
    ref = runs["fp32"]
    table = {}
    for name, r in runs.items():
        table[name] = dict(
            final_loss=r["final_loss"], test_acc=r["test_acc"],
            loss_gap=abs(r["final_loss"] - ref["final_loss"]),
            param_dist=((r["flat"] - ref["flat"]).norm() / ref["flat"].norm()).item())
    if verbose:
        print(f"AdamW lr={lr} warmup+cosine, {steps} full-batch steps, digits 64-"
              f"{demo.HIDDEN}-10 MLP, seed {seed}")
        print(f"{'run':28s} {'train loss':>11s} {'|gap| to fp32':>14s} "
              f"{'param dist':>11s} {'test acc':>9s}")
        for name, row in table.items():
            print(f"{name:28s} {row['final_loss']:11.6f} {row['loss_gap']:14.2e} "
                  f"{row['param_dist']:11.2e} {row['test_acc']:9.2%}")
    return table


if __name__ == "__main__":
    main()
