"""`compile: true` (torch.compile via Module.compile) trains to the same losses as eager on CPU."""

from __future__ import annotations

import pytest
import torch

from mhsa.config import build_run_config, weights_config
from mhsa.losses import Criterion
from mhsa.model import build_model


def run_steps(compiled: bool, steps: int = 3, lr: float = 1e-4) -> tuple[list[float], dict]:
    """Build MHSA-Net (resnet18, K=2) + criterion from seed 0, run `steps` Adam steps on fixed data."""
    torch.manual_seed(0)
    model = build_model(4, num_heads=2, backbone="resnet18", pretrained=False, mhsam=True).train()
    if compiled:
        model.compile()  # in place: parameters and state_dict keys stay those of the eager model
    crit = Criterion()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(steps, 8, 3, 64, 32, generator=gen)
    y = torch.arange(4).repeat_interleave(2)
    losses = []
    for s in range(steps):
        total, _ = crit(model(x[s]), y)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(total))
    return losses, model.state_dict()


@pytest.mark.slow
def test_compiled_losses_equal_eager_within_1e4():
    eager, eager_state = run_steps(False)
    compiled, compiled_state = run_steps(True)
    assert len(set(eager)) == 3  # the steps change the model, so three different losses are compared
    for a, b in zip(eager, compiled, strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (eager, compiled)
    assert list(eager_state) == list(compiled_state)  # checkpoints stay interchangeable


def test_compile_key_is_a_runtime_switch():
    assert build_run_config({}).compile is False
    on = build_run_config({"compile": True})
    assert on.compile is True and weights_config(on) == weights_config(build_run_config({}))
