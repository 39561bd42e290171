"""compat.torch_sgd against the real torch.optim.SGD, step for step."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax import compat
from tests import _problems

torch = pytest.importorskip("torch")

STEPS = 30
BASE_LR = 0.08


def _decay(k: Any) -> Any:
    # Works on Python ints (torch's LambdaLR) and traced counts (optax).
    return 1.0 / (1.0 + 0.15 * k)


def _torch_trajectory(options: dict[str, Any], schedule: bool, sign: float) -> list[dict[str, Any]]:
    w = torch.tensor(_problems.W0, requires_grad=True)
    b = torch.tensor(_problems.B0, requires_grad=True)
    hessian = torch.tensor(_problems.HESSIAN)
    target = torch.tensor(_problems.TARGET)
    scale = torch.tensor(_problems.CURVATURE)
    opt = torch.optim.SGD([w, b], lr=BASE_LR, **options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, _decay) if schedule else None
    out = []
    for _ in range(STEPS):
        opt.zero_grad()
        d = w - target
        loss = 0.5 * d @ hessian @ d + 0.5 * torch.sum(scale * b**2)
        (sign * loss).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        out.append({"w": w.detach().numpy().copy(), "b": b.detach().numpy().copy()})
    return out


OPTIONS = [
    pytest.param({"momentum": 0.9}, id="momentum"),
    pytest.param({"momentum": 0.9, "dampening": 0.3}, id="dampening"),
    pytest.param({"momentum": 0.9, "nesterov": True}, id="nesterov"),
    pytest.param({"momentum": 0.9, "weight_decay": 0.05}, id="weight_decay"),
    pytest.param(
        {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05}, id="nesterov_weight_decay"
    ),
    pytest.param({"momentum": 0.0, "weight_decay": 0.05}, id="plain_sgd"),
    pytest.param({"momentum": 0.9, "maximize": True}, id="maximize"),
    pytest.param(
        {"momentum": 0.7, "dampening": 0.5, "weight_decay": 0.02, "maximize": True},
        id="all_but_nesterov",
    ),
]


@pytest.mark.parametrize("schedule", [False, True], ids=["constant_lr", "lambda_lr"])
@pytest.mark.parametrize("options", OPTIONS)
def test_matches_torch_sgd(options: dict[str, Any], schedule: bool) -> None:
    # With maximize=True both sides ascend the negated loss, which converges.
    sign = -1.0 if options.get("maximize") else 1.0
    reference = _torch_trajectory(options, schedule, sign)
    lr = (lambda count: BASE_LR * _decay(count)) if schedule else BASE_LR
    tx = compat.torch_sgd(lr, **options)
    ours = _problems.trajectory(tx, STEPS, loss_fn=lambda p: sign * _problems.loss(p))
    _problems.assert_trajectories_close(ours, reference)
    # The run must have moved far from the start, or parity would be vacuous.
    assert np.linalg.norm(ours[-1]["w"] - _problems.W0) > 0.5


def test_torch_nesterov_under_jit_matches_torch() -> None:
    options = {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}
    reference = _torch_trajectory(options, True, 1.0)
    tx = compat.torch_sgd(lambda c: BASE_LR * _decay(c), **options)

    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any]:
        updates, state = tx.update(jax.grad(_problems.loss)(params), state, params)
        return jax.tree.map(jnp.add, params, updates), state

    params = _problems.initial_params()
    state = tx.init(params)
    ours = []
    for _ in range(STEPS):
        params, state = step(params, state)
        ours.append(jax.tree.map(np.asarray, params))
    _problems.assert_trajectories_close(ours, reference)
