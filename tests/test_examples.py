"""Each recipe in examples/ (README "Recipes") runs and trains; the framework recipes run
where Hugging Face transformers / Lightning are installed (pip install -e ".[dev]")."""

import importlib.util
import os

import pytest

from fusedsched import schedules as S

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["plain_loop", "grad_scaler", "torch_scheduler"])
def test_plain_recipes_train(name):
    losses = _load(name).main()
    assert losses[-1] < 0.5 * losses[0]


def _check_fused_schedule_ran(opt, steps):
    group = opt.param_groups[0]
    assert group["schedule_position"].item() == steps
    assert group["lr"] == 1e-2             # the framework's scheduler left it alone
    expected = 1e-2 * S.warmup(S.cosine(steps - 3), warmup_steps=3)(steps)  # next update's
    assert opt.get_last_lr() == pytest.approx([expected], rel=1e-12)


def test_hf_trainer_recipe(monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    opt, _ = _load("hf_trainer").main(steps=12)
    _check_fused_schedule_ran(opt, 12)


def test_lightning_recipe():
    pytest.importorskip("lightning")
    opt, _ = _load("lightning_module").main(steps=12)
    _check_fused_schedule_ran(opt, 12)
