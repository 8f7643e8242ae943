"""Recipe: fusedsched in Hugging Face's Trainer.

Pass the optimizer as ``optimizers=(opt, None)``. Trainer then builds its own scheduler
from ``lr_scheduler_type`` on top of our optimizer, and the two multiply; set
``lr_scheduler_type="constant"`` so that the fused schedule alone drives the lr (or give no
built-in schedule and let Trainer's scheduler do it). Runs offline: a tiny local model.
"""

import tempfile

import torch

import fusedsched as fs
from fusedsched import schedules as S


class TinyRegressor(torch.nn.Module):
    """Any nn.Module whose forward returns a dict with "loss" works in Trainer."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1))

    def forward(self, x, labels=None):
        out = self.net(x)
        loss = None if labels is None else torch.nn.functional.mse_loss(out, labels)
        return {"loss": loss, "logits": out}


def main(steps=30, seed=0):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(seed)
    xs = torch.randn(64, 4)
    ys = xs.sum(1, keepdim=True)
    data = [{"x": x, "labels": y} for x, y in zip(xs, ys)]
    model = TinyRegressor()
    opt = fs.AdamW(model.parameters(), lr=1e-2,
                   schedule=S.warmup(S.cosine(steps - 3), warmup_steps=3))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=16,
                                 lr_scheduler_type="constant", learning_rate=1e-2,
                                 use_cpu=True, report_to=[], save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, seed=seed)
        trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
        result = trainer.train()
    print(f"train loss {result.training_loss:.4f}, next lr {opt.get_last_lr()[0]:.2e}")
    return opt, model


if __name__ == "__main__":
    main()
