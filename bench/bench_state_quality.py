"""Training quality of reduced-precision optimizer state: does ``state_dtype=`` cost loss?

A byte-level (character-level) language model is trained with ``fs.AdamW`` and a
warmup+cosine schedule once per mode; every mode starts from the same initial weights and
sees the same batches in the same order, so the only difference between runs is how the
optimizer stores ``exp_avg`` / ``exp_avg_sq``:

``fp32``          ``fs.AdamW(state_dtype=None)``: float32 moments (the baseline).
``bf16``          ``state_dtype=torch.bfloat16``: bfloat16 moments, stochastic rounding.
``8bit``          ``state_dtype="8bit"``: blockwise 8-bit moments, stochastic rounding.
``bf16_nearest``  ablation: ``torch.optim.AdamW(foreach=False)`` whose moments are rounded
                  to the nearest bfloat16 (and back to float32) after every step. It is
                  what a plain bfloat16 state would do; against ``bf16`` it shows what the
                  stochastic rounding buys.
``torch_fp32``    cross-check: ``torch.optim.AdamW(foreach=False)`` with ``LambdaLR`` of
                  the same schedule. It should land on the ``fp32`` row: to the last bit
                  on the default ``--backend reference`` (torch's operations in torch's
                  order), within the noise on Numba (IEEE square roots, not torch's).
``fp32_reshuffled``  the noise floor: ``fp32`` again with the batches in another order
                  (another draw of the window starts). Any perturbation of a training run
                  grows into a different trajectory; how far a different batch order moves
                  the final loss is the yardstick for the other rows' differences.

Corpus: Python's own standard library source (``sysconfig.get_paths()["stdlib"]``), the
files of ``CORPUS_FILES`` in that order, read as bytes and concatenated; no download. The
text differs between Python minor versions, so ``quality.json`` records the Python version
and the corpus's size and sha256 (the committed results: CPython 3.11). The last 10% of
the bytes are held out: training batches come from the first 90%, the held-out loss is
measured on the rest.

Model: a 2-layer pre-norm transformer (``nn.TransformerEncoderLayer`` with a causal mask),
width 64, 256-symbol byte vocabulary, a learned position embedding and an untied output
layer: 30 tensors, from 2-D matrices of 16k elements (64 blocks of the 8-bit format) down
to 64-element biases and LayerNorm weights (16 tensors smaller than one 256-element block).
The sizes are what 2 shared CPU cores train for 800 steps in all six modes within about
10 minutes (1000 steps took 11 minutes with the cores loaded by other jobs).

Writes ``quality.json``, ``quality.md`` and ``quality.png`` to ``--out`` (default
``bench/results/state_dtype``)::

    python bench/bench_state_quality.py [--steps N] [--out DIR] [--modes fp32,bf16,...]

The defaults are the committed run; ``--steps`` and the size options exist so the test can
run it in seconds (``tests/test_state_quality_script.py``).
"""

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import sysconfig
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import fusedsched as fs
from fusedsched import schedules as S

# A fixed list (and order) of pure-Python standard library modules, 1.8 MB together: files
# at these paths in CPython 3.10 to 3.13, none deprecated for removal (not pathlib.py nor
# zipfile.py: each became a package, in 3.13 and 3.12).
CORPUS_FILES = (
    "argparse.py", "inspect.py", "difflib.py", "textwrap.py", "shutil.py", "pprint.py",
    "dataclasses.py", "functools.py", "collections/__init__.py", "logging/__init__.py",
    "typing.py", "subprocess.py", "tarfile.py", "random.py", "ftplib.py", "smtplib.py",
    "email/message.py",
    "http/client.py", "pydoc.py", "doctest.py", "unittest/case.py", "configparser.py",
    "statistics.py", "enum.py", "ast.py", "threading.py", "tokenize.py", "calendar.py",
    "heapq.py", "fractions.py",
)
HELD_OUT = 0.10          # the last 10% of the corpus
VOCAB = 256              # bytes

# Each mode: (label in the table and plot, how its optimizer is built).
MODES = {
    "fp32": "fs.AdamW state_dtype=None (float32)",
    "bf16": "fs.AdamW state_dtype=torch.bfloat16 (stochastic rounding)",
    "8bit": "fs.AdamW state_dtype=\"8bit\" (blockwise, stochastic rounding)",
    "bf16_nearest": "torch AdamW, moments rounded to nearest bfloat16 (ablation)",
    "torch_fp32": "torch AdamW float32 (cross-check of fp32)",
    "fp32_reshuffled": "fs.AdamW float32, other batch order (noise floor)",
}
FS_STATE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "8bit": "8bit", "fp32_reshuffled": None}

TARGET = 0.01            # bf16 and 8bit: final held-out loss within 1% of fp32


def load_corpus(files=CORPUS_FILES):
    """The corpus as a uint8 tensor, and a description (files, size, sha256, Python).

    Raises FileNotFoundError naming every missing file (a Python build without part of
    the standard library's source, e.g. a stripped distribution package)."""
    root = sysconfig.get_paths()["stdlib"]
    paths = [os.path.join(root, f) for f in files]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"bench_state_quality: the corpus is Python's standard library source under "
            f"{root}, and these files are missing: {', '.join(missing)} (install the full "
            f"Python distribution, or pass --corpus-files with files that exist)")
    data = b"".join(open(p, "rb").read() for p in paths)
    info = dict(root=root, files=list(files), bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(), python=platform.python_version())
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64), info


class TinyLM(nn.Module):
    """A causal pre-norm transformer over bytes: embedding + position embedding, ``layers``
    ``nn.TransformerEncoderLayer`` (no dropout: runs differ only by the optimizer), a final
    LayerNorm and an untied head."""

    def __init__(self, d_model, layers, heads, context):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.zeros(context, d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context),
                             persistent=False)

    def forward(self, x):
        n = x.shape[1]
        h = self.embed(x) + self.pos[:n]
        for block in self.blocks:
            h = block(h, src_mask=self.mask[:n, :n], is_causal=True)
        return self.head(self.norm(h))


def windows(data, starts, context):
    """(inputs, targets) of the ``context``-byte windows of ``data`` at ``starts``."""
    idx = starts[:, None] + torch.arange(context + 1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def heldout_loss(model, data, starts, context, batch):
    """Mean next-byte cross-entropy (nats) over the windows at ``starts``."""
    total, count = 0.0, 0
    for i in range(0, len(starts), batch):
        x, y = windows(data, starts[i:i + batch], context)
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1),
                                 reduction="sum").item()
        count += y.numel()
    return total / count


def make_optimizer(mode, model, args, schedule):
    """The optimizer of ``mode`` and what to call after each ``step()``: the torch modes'
    LambdaLR step, plus the moments' rounding of ``bf16_nearest``."""
    hyper = dict(lr=args.lr, betas=(0.9, args.beta2), eps=1e-8,
                 weight_decay=args.weight_decay)
    # One group, weight decay on every tensor: biases and norms are stepped in the same
    # kernel call as the matrices, as a plain AdamW(model.parameters()) does.
    params = list(model.parameters())
    if mode in FS_STATE_DTYPES:
        opt = fs.AdamW(params, **hyper, schedule=schedule, backend=args.backend,
                       state_dtype=FS_STATE_DTYPES[mode])
        return opt, lambda: None
    # foreach=False: the single-tensor loop, whose state tensors we can round in place.
    opt = torch.optim.AdamW(params, **hyper, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def after_step():
        sched.step()
        if mode == "bf16_nearest":
            # After the step: the step used its unrounded moments and only the stored copy
            # is rounded, as state_format specifies for every format.
            for st in opt.state.values():
                for key in ("exp_avg", "exp_avg_sq"):
                    st[key].copy_(st[key].to(torch.bfloat16).to(torch.float32))
    return opt, after_step


def state_bytes_per_element(mode, opt, params):
    """Bytes of optimizer state (every tensor but ``step``, 8-bit scales included) per
    parameter element. ``bf16_nearest`` keeps float32 tensors that hold bfloat16 values:
    it is counted as the bfloat16 storage it emulates (2 bytes per moment)."""
    n = sum(p.numel() for p in params)
    if mode == "bf16_nearest":
        return 2 * 2.0
    total = sum(v.numel() * v.element_size() for st in opt.state.values()
                for k, v in st.items() if k != "step" and isinstance(v, torch.Tensor))
    return total / n


def train(mode, init_state, data, split, batches, args):
    """Train one mode from ``init_state`` on ``batches`` (training window starts, one row
    per step); return its record for quality.json."""
    torch.manual_seed(args.seed)        # the optimizers read torch's seed: same in every mode
    model = TinyLM(args.d_model, args.layers, args.heads, args.context)
    model.load_state_dict(init_state)
    schedule = S.warmup(S.cosine(args.steps - args.warmup, end_factor=0.1),
                        warmup_steps=args.warmup)
    opt, after_step = make_optimizer(mode, model, args, schedule)
    curve_starts, final_starts = split
    curve = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        if step % args.eval_every == 0:
            curve.append([step, heldout_loss(model, data, curve_starts, args.context,
                                             args.batch)])
        x, y = windows(data, batches[step], args.context)
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        after_step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{mode}: training loss {loss.item()} at step {step}")
    final = heldout_loss(model, data, final_starts, args.context, args.batch)
    curve.append([args.steps, heldout_loss(model, data, curve_starts, args.context,
                                           args.batch)])
    wall = time.perf_counter() - t0
    params = list(model.parameters())
    return dict(description=MODES[mode], final_heldout_loss=final, final_train_loss=loss.item(),
                curve=curve, steps=args.steps, wall_s=round(wall, 2),
                state_bytes_per_element=state_bytes_per_element(mode, opt, params))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--out", default=os.path.join("bench", "results", "state_dtype"))
    p.add_argument("--modes", default=",".join(MODES),
                   help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument("--warmup", type=int, default=None, help="default: steps // 20")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=None, help="default: steps // 30")
    p.add_argument("--eval-windows", type=int, default=128,
                   help="held-out windows of the curve; the final loss uses all of them")
    p.add_argument("--seed", type=int, default=0)
    # Every fs mode on the same backend. The reference gives the Numba kernels' results
    # (bit for bit in bfloat16 / 8-bit state; float32 up to the square roots, IEEE in Numba,
    # torch's in the reference). The committed run is on the reference: with "auto" (Numba)
    # on the shared cores the process ran at ~107% CPU with 1 torch thread and every later
    # mode, the pure-torch ones too, took 2-4x longer (not investigated further).
    p.add_argument("--backend", default="reference")
    # One torch thread: on the 2 shared cores, with other jobs running, 2 threads spent 13x
    # longer (146 s vs 11 s for 100 fp32 steps, measured the same minute), the threads
    # waiting for each other at every barrier; on a quiet machine 2 threads are ~2x faster.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--corpus-files", default=None,
                   help="comma-separated stdlib-relative files (default: CORPUS_FILES)")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    if args.warmup is None:
        args.warmup = max(1, args.steps // 20)
    if args.eval_every is None:
        args.eval_every = max(1, args.steps // 30)
    return args


def write_markdown(path, result, command):
    modes = result["modes"]
    base = modes.get("fp32", {}).get("final_heldout_loss")
    cfg = result["config"]
    lines = [
        "# Training quality of reduced-precision optimizer state",
        "",
        f"Byte-level transformer LM ({result['model']['parameters']:,} parameters in "
        f"{result['model']['tensors']} tensors, {result['model']['tensors_below_one_block']} "
        f"of them smaller than one 8-bit block) on {result['corpus']['bytes']:,} bytes of "
        f"the Python {result['corpus']['python']} standard library source (last 10% held "
        f"out); AdamW lr {cfg['lr']}, betas (0.9, {cfg['beta2']}), weight decay "
        f"{cfg['weight_decay']}, warmup {cfg['warmup']} + cosine to 0.1, {cfg['steps']} steps "
        f"of {cfg['batch']}x{cfg['context']} bytes. Same initial weights and batches in "
        f"every mode. Final held-out loss: mean cross-entropy (nats per byte) over all "
        f"{result['heldout_windows_final']} non-overlapping held-out windows.",
        "",
        "| mode | optimizer | final held-out loss | vs fp32 | state bytes / element | "
        "wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in modes.items():
        rel = "" if base is None else f"{100 * (m['final_heldout_loss'] / base - 1):+.2f}%"
        lines.append(f"| {name} | {m['description']} | {m['final_heldout_loss']:.4f} | {rel} | "
                     f"{m['state_bytes_per_element']:.3f} | {m['wall_s']:.0f} |")
    lines += ["", f"Target: bf16 and 8bit within {100 * TARGET:.0f}% of fp32: "
              + ", ".join(f"{k} {'met' if v else 'NOT met'}"
                          for k, v in result["target_met"].items()) + ".", ""]
    if "cross_check_max_abs_diff" in result:
        diff = result["cross_check_max_abs_diff"]
        lines += [f"fp32 vs torch_fp32: largest difference of the held-out losses (curve and "
                  f"final) {diff:.3g}" + (" (the same losses to the last bit)." if diff == 0
                                          else "."), ""]
    lines += ["`bf16_nearest` stores float32 tensors holding bfloat16 values; its state bytes "
              "are those of the bfloat16 storage it emulates.", ""]
    lines += [f"fs modes on backend `{cfg['backend']}`; {cfg['threads']} torch thread(s). "
              f"Reproduce (all modes {result['total_wall_s']:.0f} s here, on 2 CPU cores "
              f"shared with other jobs):", "", "```bash", command, "```", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot(path, result):
    """Held-out loss vs step per mode, and the last 40% of the run zoomed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"fp32": ("k", "-"), "torch_fp32": ("0.55", ":"), "bf16": ("tab:blue", "-"),
              "8bit": ("tab:green", "-"), "bf16_nearest": ("tab:red", "--"),
              "fp32_reshuffled": ("tab:purple", "-.")}
    steps = result["config"]["steps"]
    lo, hi = math.inf, -math.inf
    for name, m in result["modes"].items():
        color, ls = styles[name]
        s = [c[0] for c in m["curve"]]
        v = [c[1] for c in m["curve"]]
        for a in (ax, zoom):
            a.plot(s, v, color=color, linestyle=ls, label=name)
        # the zoom's y range: its points and the one before (the line entering the panel)
        first = max([i for i, x in enumerate(s) if x <= 0.6 * steps], default=0)
        tail = v[first:]
        lo, hi = min(lo, *tail), max(hi, *tail)
    # log y: the first steps fall from ln(256) = 5.5 to ~2.5 and would flatten the rest
    ax.set(title="held-out loss", xlabel="step", ylabel="cross-entropy (nats / byte)",
           yscale="log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    zoom.set(title="last 40% of the run", xlabel="step", xlim=(0.6 * steps, steps))
    if math.isfinite(lo):
        pad = 0.05 * (hi - lo) or 0.01
        zoom.set_ylim(lo - pad, hi + pad)
    for a in (ax, zoom):
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle(f"AdamW state precision, byte-level LM, {steps} steps (curve: "
                 f"{result['heldout_windows_curve']} held-out windows)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    files = CORPUS_FILES if args.corpus_files is None else tuple(args.corpus_files.split(","))
    data, corpus = load_corpus(files)
    cut = int(len(data) * (1 - HELD_OUT))
    need = args.context + 1
    if cut < need or len(data) - cut < need:
        raise ValueError(f"corpus of {len(data)} bytes too small for context {args.context}")
    # Held-out windows: every non-overlapping window of the held-out part for the final
    # loss; an evenly spaced subset of them for the curve (cheaper, evaluated 30 times).
    final_starts = torch.arange(cut, len(data) - need + 1, args.context)
    pick = torch.linspace(0, len(final_starts) - 1, min(args.eval_windows, len(final_starts)))
    curve_starts = final_starts[pick.round().long()]
    # Every mode's batches: one draw, from a generator of its own; fp32_reshuffled's from
    # the next seed.
    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, cut - need + 1, (args.steps, args.batch), generator=gen)
    batches, reshuffled = draw(args.seed), draw(args.seed + 1)
    torch.manual_seed(args.seed)
    model = TinyLM(args.d_model, args.layers, args.heads, args.context)
    init_state = copy.deepcopy(model.state_dict())
    sizes = [p.numel() for p in model.parameters()]

    result = dict(
        config={k: v for k, v in vars(args).items() if k not in ("out",)},
        corpus=corpus,
        model=dict(parameters=sum(sizes), tensors=len(sizes),
                   tensors_below_one_block=sum(n < 256 for n in sizes), sizes=sizes),
        heldout_windows_final=len(final_starts), heldout_windows_curve=len(curve_starts),
        machine=dict(platform=platform.platform(), torch=torch.__version__,
                     torch_threads=torch.get_num_threads(), fusedsched=fs.__version__),
        modes={})
    t0 = time.perf_counter()
    for mode in args.modes:
        rec = train(mode, init_state, data, (curve_starts, final_starts),
                    reshuffled if mode == "fp32_reshuffled" else batches, args)
        result["modes"][mode] = rec
        print(f"{mode:>13}: held-out {rec['final_heldout_loss']:.4f}  "
              f"({rec['wall_s']:.0f} s, {rec['state_bytes_per_element']:.3f} B/elem)",
              flush=True)
    result["total_wall_s"] = round(time.perf_counter() - t0, 1)
    base = result["modes"].get("fp32", {}).get("final_heldout_loss")
    for m in result["modes"].values():
        m["rel_diff_vs_fp32"] = None if base is None else m["final_heldout_loss"] / base - 1
    if "fp32" in result["modes"] and "torch_fp32" in result["modes"]:
        a, b = result["modes"]["fp32"], result["modes"]["torch_fp32"]
        result["cross_check_max_abs_diff"] = max(
            [abs(a["final_heldout_loss"] - b["final_heldout_loss"])]
            + [abs(x[1] - y[1]) for x, y in zip(a["curve"], b["curve"])])
    result["target"] = TARGET
    result["target_met"] = {k: abs(result["modes"][k]["rel_diff_vs_fp32"]) <= TARGET
                            for k in ("bf16", "8bit") if k in result["modes"] and base}
    command = "python bench/bench_state_quality.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    result["command"] = command.strip()

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump(result, f, indent=1)
    write_markdown(os.path.join(args.out, "quality.md"), result, result["command"])
    plot(os.path.join(args.out, "quality.png"), result)
    return result


if __name__ == "__main__":
    main()
