"""The stall of a bfloat16 ``exp_avg_sq`` rounded to nearest, measured against stochastic
rounding: the evidence behind ``state_dtype=torch.bfloat16`` rounding stochastically.

Adam's second moment ``v = beta2 * v + (1 - beta2) * g**2`` with beta2 = 0.999 moves ``v``
by at most 0.1% of itself downwards, while half a bfloat16 ulp is 0.20% to 0.39% of the
value: rounded to nearest, a step that would lower ``v`` always rounds back to ``v``, and
one that raises it only survives when ``g**2`` exceeds ``v`` by a factor of about 3 to 5.
Stochastic rounding (``kernels/reference/_state.round_bfloat16`` with the kernels' own
``random_bits``) also leaves the stored value unchanged in most steps, but it moves by a
whole ulp with the probability that makes the stored value right on average.

Three copies of ``v`` are stepped with the same gradients for ``--steps`` steps from
``v = 0`` (as Adam starts): float32 (the yardstick), bfloat16 rounded to nearest and
bfloat16 rounded stochastically (the update computed in float32 from the stored value,
then stored, as the kernels do). The gradients: ``g = s_i * scale(t) * z`` with ``z``
standard normal per element and step, ``s_i`` log-uniform over 1e-6 .. 1e-1 per element
(the spread of per-parameter gradient magnitudes in a network), and two scenarios:
``stationary`` (``scale = 1``) and ``decaying`` (``scale`` falls 10x over the run,
geometrically, as gradient norms shrink while the loss falls).

Reported per scenario and rounding: the fraction of (element, step) pairs in which the
stored value did not change at all (all steps, and the last 1000), and after the last step
the ratio of the bfloat16 value to the float32 one (median, mean, 5th / 95th percentiles,
the share of elements more than 10% off). Writes ``bf16_stall.md`` to ``--out``::

    python bench/bench_bf16_stall.py [--steps N] [--elements N] [--out DIR]
"""

import argparse
import os
import shlex
import sys
import time

import torch

from fusedsched.kernels.ops import SIGNATURES
from fusedsched.kernels.reference import _state as R

# The random bits of exp_avg_sq: the kernels salt each state with its index in the
# algorithm's state order.
SALT = SIGNATURES["adam"].states.index("exp_avg_sqs")
SCENARIOS = {"stationary": 1.0, "decaying": 0.1}   # the gradient scale at the last step


def run(scenario, args):
    """Step the three copies of ``v``; return the statistics of each bfloat16 rounding."""
    gen = torch.Generator().manual_seed(args.seed)
    n, steps, beta2 = args.elements, args.steps, args.beta2
    s = 10.0 ** (torch.rand(n, generator=gen, dtype=torch.float64) * 5 - 6)
    s = s.to(torch.float32)
    end = SCENARIOS[scenario]
    v32 = torch.zeros(n)
    stored = {"nearest": torch.zeros(n, dtype=torch.bfloat16),
              "stochastic": torch.zeros(n, dtype=torch.bfloat16)}
    still = {k: 0 for k in stored}
    still_tail = {k: 0 for k in stored}
    tail = max(0, steps - 1000)
    for t in range(steps):
        g = s * (end ** (t / max(1, steps - 1))) * torch.randn(n, generator=gen)
        g2 = (1 - beta2) * g * g
        v32 = beta2 * v32 + g2
        step = torch.tensor(float(t + 1), dtype=torch.float64)
        for kind, old in stored.items():
            x = beta2 * old.to(torch.float32) + g2
            if kind == "nearest":
                new = x.to(torch.bfloat16)
            else:
                new = R.round_bfloat16(x, R.random_bits(x, step, SALT))
            same = int((new.view(torch.int16) == old.view(torch.int16)).sum())
            still[kind] += same
            if t >= tail:
                still_tail[kind] += same
            stored[kind] = new
    out = {}
    for kind, v in stored.items():
        ratio = (v.to(torch.float64) / v32.to(torch.float64))
        ratio = ratio[torch.isfinite(ratio)]
        q = torch.quantile(ratio, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
        out[kind] = dict(
            unchanged=still[kind] / (n * steps),
            unchanged_tail=still_tail[kind] / (n * (steps - tail)),
            p5=q[0].item(), median=q[1].item(), p95=q[2].item(), mean=ratio.mean().item(),
            off10=((ratio - 1).abs() > 0.1).double().mean().item())
    return out


def markdown(results, args, command, wall):
    lines = [
        "# bfloat16 `exp_avg_sq`: round to nearest vs stochastic rounding",
        "",
        f"Adam's second moment `v = beta2 * v + (1 - beta2) * g**2`, beta2 = {args.beta2}, "
        f"{args.elements:,} elements, {args.steps} steps from v = 0; gradients "
        f"`g = s_i * scale(t) * z`, z ~ N(0, 1) per element and step, s_i log-uniform over "
        f"1e-6 .. 1e-1 per element; `stationary`: scale 1, `decaying`: scale falls 10x over "
        f"the run. Each bfloat16 copy is updated in float32 from its stored value and "
        f"stored again; float32 is the yardstick. Stochastic rounding: "
        f"`kernels/reference/_state.round_bfloat16` with `random_bits` (the kernels' bits).",
        "",
        "\"unchanged\": share of (element, step) pairs whose stored value did not change; "
        f"\"ratio\": bfloat16 / float32 value after step {args.steps} over the elements; "
        "\"> 10% off\": share of elements whose ratio is outside [0.9, 1.1].",
        "",
        "| scenario | rounding | unchanged (all steps) | unchanged (last 1000) | "
        "ratio median | ratio mean | ratio p5 .. p95 | > 10% off |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scenario, res in results.items():
        for kind, r in res.items():
            lines.append(
                f"| {scenario} | {kind} | {100 * r['unchanged']:.1f}% | "
                f"{100 * r['unchanged_tail']:.1f}% | {r['median']:.3f} | {r['mean']:.3f} | "
                f"{r['p5']:.3f} .. {r['p95']:.3f} | {100 * r['off10']:.1f}% |")
    lines += [
        "",
        "Reading: a stochastically rounded value also stays put in most steps (a 0.1% move "
        "is a fraction of an ulp), but it moves by a whole ulp with the probability that "
        "keeps it right on average: its ratio to float32 stays centred on 1. Rounded to "
        "nearest, `v` can never decrease (0.1% is below half an ulp) and only rises on "
        "large gradients: the ratio drifts off 1 instead.",
        "",
        f"Reproduce ({wall:.0f} s here):",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--elements", type=int, default=1 << 16)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join("bench", "results", "state_dtype"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = {scenario: run(scenario, args) for scenario in SCENARIOS}
    wall = time.perf_counter() - t0
    command = ("python bench/bench_bf16_stall.py "
               + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    text = markdown(results, args, command, wall)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bf16_stall.md"), "w") as f:
        f.write(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
