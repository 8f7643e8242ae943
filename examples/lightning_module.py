"""Recipe: fusedsched in PyTorch Lightning's configure_optimizers.

Return the optimizer alone: its schedule runs in the kernel, so there is no
``lr_scheduler`` entry to return (one would multiply with it; see torch_scheduler.py).
"""

import torch

import fusedsched as fs
from fusedsched import schedules as S

try:
    import lightning as L
except ImportError:      # pragma: no cover - Lightning is optional
    L = None


def make_module(steps):
    class Regressor(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
                                           torch.nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return fs.AdamW(self.parameters(), lr=1e-2,
                            schedule=S.warmup(S.cosine(steps - 3), warmup_steps=3))
    return Regressor()


def main(steps=30, seed=0):
    torch.manual_seed(seed)
    xs = torch.randn(64, 4)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, xs.sum(1, keepdim=True)),
                                       batch_size=16)
    module = make_module(steps)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, data)
    opt = trainer.optimizers[0]
    print(f"loss {trainer.callback_metrics['loss']:.4f}, next lr {opt.get_last_lr()[0]:.2e}")
    return opt, module


if __name__ == "__main__":
    main()
