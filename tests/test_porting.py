"""The scheduler table of docs/porting.md, against the real PyTorch and Keras schedulers.

The page's own blocks (run by tests/test_docs.py) show one setting per row;
here each row is checked over several settings, including the corners where a
translation is most easily off by one step: milestones at the first step, a
OneCycle peak that falls between two steps, a cosine run past its period.
The learning rate compared is the one each optimizer step uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

BASE_LR = 0.1


def values(schedule: Callable[[Any], Any], steps: int) -> np.ndarray:
    return np.array([float(schedule(k)) for k in range(steps)])


# --- PyTorch ----------------------------------------------------------------------


def torch_rates(make: Callable[[Any], Any], steps: int, per: int = 1) -> tuple[Any, Any]:
    """lr and momentum of each optimizer step; ``scheduler.step()`` after every ``per`` steps."""
    torch = pytest.importorskip("torch")
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=BASE_LR, momentum=0.9)
    scheduler = make(optimizer)
    rates, momenta = [], []
    for step in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        if (step + 1) % per == 0:
            scheduler.step()
    return np.array(rates), np.array(momenta)


def lr_scheduler() -> Any:
    return pytest.importorskip("torch").optim.lr_scheduler


@pytest.mark.parametrize("per", [1, 4])
@pytest.mark.parametrize(("milestones", "gamma"), [([1, 5], 0.5), ([3, 4, 10], 0.1), ([7], 0.9)])
def test_multistep(milestones: list[int], gamma: float, per: int) -> None:
    sched = lr_scheduler()
    rates, _ = torch_rates(lambda opt: sched.MultiStepLR(opt, milestones, gamma), 14 * per, per)
    schedule = optax.piecewise_constant_schedule(BASE_LR, {m * per: gamma for m in milestones})
    np.testing.assert_allclose(values(schedule, 14 * per), rates, rtol=1e-6)


@pytest.mark.parametrize("per", [1, 3])
@pytest.mark.parametrize(("t_max", "eta_min"), [(10, 0.0), (7, 0.01), (25, 0.001)])
def test_cosine_annealing(t_max: int, eta_min: float, per: int) -> None:
    sched = lr_scheduler()
    make = lambda opt: sched.CosineAnnealingLR(opt, t_max, eta_min)  # noqa: E731
    cosine = optax.cosine_decay_schedule(BASE_LR, t_max, alpha=eta_min / BASE_LR)
    rates, _ = torch_rates(make, (t_max + 1) * per, per)
    got = values(lambda k: cosine(k // per), (t_max + 1) * per)
    np.testing.assert_allclose(got, rates, rtol=1e-5, atol=1e-9)
    # Past T_max PyTorch climbs back along the cosine; optax stays at its floor.
    rates, _ = torch_rates(make, 3 * t_max)
    periodic = lambda k: eta_min + (BASE_LR - eta_min) * (1 + jnp.cos(jnp.pi * k / t_max)) / 2  # noqa: E731
    np.testing.assert_allclose(values(periodic, 3 * t_max), rates, rtol=1e-5, atol=1e-9)
    assert rates[t_max + 3] > values(cosine, t_max + 4)[-1]


@pytest.mark.parametrize(("start", "end", "total"), [(0.1, 1.0, 5), (0.5, 1.0, 1), (1.0, 0.2, 8)])
def test_linear_and_sequential(start: float, end: float, total: int) -> None:
    sched = lr_scheduler()
    linear = optax.linear_schedule(BASE_LR * start, BASE_LR * end, total)
    rates, _ = torch_rates(lambda opt: sched.LinearLR(opt, start, end, total), total + 4)
    np.testing.assert_allclose(values(linear, total + 4), rates, rtol=1e-6)

    def chain(opt: Any) -> Any:
        warmup = sched.LinearLR(opt, start, end, total)
        decay = sched.CosineAnnealingLR(opt, T_max=12, eta_min=0.0)
        return sched.SequentialLR(opt, [warmup, decay], milestones=[total])

    joined = optax.join_schedules(
        [linear, optax.cosine_decay_schedule(BASE_LR, 12)], boundaries=[total]
    )
    rates, _ = torch_rates(chain, total + 13)
    np.testing.assert_allclose(values(joined, total + 13), rates, rtol=1e-5, atol=1e-9)


def one_cycle(max_lr: float, total: int, pct_start: float) -> tuple[Any, Any]:
    """The page's port of OneCycleLR (other arguments at their defaults): lr and momentum."""
    peak, last = pct_start * total - 1, total - 1
    lr = optax.piecewise_interpolate_schedule(
        "cosine", max_lr / 25, {peak: 25.0, last: 1 / (25 * 1e4)}
    )
    momentum = optax.piecewise_interpolate_schedule(
        "cosine", 0.95, {peak: 0.85 / 0.95, last: 0.95 / 0.85}
    )
    return lr, momentum


@pytest.mark.parametrize(("total", "pct_start"), [(20, 0.3), (25, 0.3), (100, 0.25), (9, 0.5)])
def test_one_cycle(total: int, pct_start: float) -> None:
    sched = lr_scheduler()
    make = lambda opt: sched.OneCycleLR(opt, 0.4, total_steps=total, pct_start=pct_start)  # noqa: E731
    rates, momenta = torch_rates(make, total)
    lr, momentum = one_cycle(0.4, total, pct_start)
    np.testing.assert_allclose(values(lr, total), rates, rtol=1e-5, atol=1e-6 * 0.4)  # float32
    np.testing.assert_allclose(values(momentum, total), momenta, rtol=1e-6)


def test_optax_one_cycle_is_not_torchs() -> None:
    sched = lr_scheduler()
    rates, _ = torch_rates(lambda opt: sched.OneCycleLR(opt, 0.4, total_steps=20), 20)
    optax_rates = values(optax.cosine_onecycle_schedule(20, 0.4), 20)
    assert np.abs(optax_rates - rates).max() > 0.1 * 0.4


def test_one_cycle_trains_as_torch_does() -> None:
    """The momentum schedule reaches the buffer: a whole OneCycle run, params compared."""
    torch = pytest.importorskip("torch")
    from momentum_jax import compat

    hessian = np.diag([1.0, 3.0, 0.2]).astype(np.float32)
    theta0 = np.array([1.0, -1.0, 2.0], np.float32)
    w = torch.tensor(theta0, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=25)
    lr, momentum = one_cycle(0.5, 25, 0.3)
    tx = compat.torch_sgd(lr, momentum=momentum, weight_decay=1e-2)
    theta = jnp.asarray(theta0)
    state = tx.init(theta)
    for _ in range(25):
        opt.zero_grad()
        (0.5 * w @ torch.from_numpy(hessian) @ w).backward()
        opt.step()
        scheduler.step()
        updates, state = tx.update(jnp.asarray(hessian) @ theta, state, theta)
        theta = optax.apply_updates(theta, updates)
    np.testing.assert_allclose(theta, w.detach().numpy(), rtol=1e-5, atol=1e-6)
    # With the momentum held at 0.9 instead, the run ends elsewhere.
    tx = compat.torch_sgd(lr, momentum=0.9, weight_decay=1e-2)
    held, state = jnp.asarray(theta0), tx.init(jnp.asarray(theta0))
    for _ in range(25):
        updates, state = tx.update(jnp.asarray(hessian) @ held, state, held)
        held = optax.apply_updates(held, updates)
    assert not np.allclose(held, w.detach().numpy(), rtol=1e-3)


# --- Keras 3 --------------------------------------------------------------------------


def keras_schedules() -> Any:
    return pytest.importorskip("keras").optimizers.schedules


def same(keras_schedule: Any, schedule: Callable[[Any], Any], steps: int = 40) -> None:
    # Every step in one eager call: Keras' warm-up is an ops.cond, which would compile anew
    # at each call for one step (vmap makes it a select). Vectorised and scalar float32
    # cosines may differ in the last place, which the schedule scales by its peak: atol is
    # a few float32 spacings at the peaks used here (0.1 and 0.2).
    expected = np.asarray(jax.vmap(keras_schedule)(jnp.arange(steps)))
    np.testing.assert_allclose(values(schedule, steps), expected, rtol=1e-6, atol=2e-8)


@pytest.mark.parametrize(
    ("boundaries", "rates"),
    [([0, 10], [0.1, 0.05, 0.01]), ([6, 7, 20], [1.0, 0.5, 0.3, 0.2]), ([3, 9], [0.1, 0.0, 0.01])],
)
def test_keras_piecewise_constant(boundaries: list[int], rates: list[float]) -> None:
    # The table's row: values[i] up to and including step boundaries[i], a 0 among them too.
    ours = optax.join_schedules(
        [optax.constant_schedule(r) for r in rates], [b + 1 for b in boundaries]
    )
    same(keras_schedules().PiecewiseConstantDecay(boundaries, rates), ours)


@pytest.mark.parametrize(("decay_steps", "alpha"), [(10, 0.0), (25, 0.1), (7, 0.5)])
@pytest.mark.parametrize("warmup", [0, 1, 6])
def test_keras_cosine_decay(decay_steps: int, alpha: float, warmup: int) -> None:
    schedules = keras_schedules()
    if warmup == 0:
        keras_schedule = schedules.CosineDecay(0.1, decay_steps, alpha=alpha)
        same(keras_schedule, optax.cosine_decay_schedule(0.1, decay_steps, alpha=alpha))
        return
    keras_schedule = schedules.CosineDecay(
        0.01, decay_steps, alpha=alpha, warmup_target=0.2, warmup_steps=warmup
    )
    schedule = optax.warmup_cosine_decay_schedule(
        0.01, 0.2, warmup, warmup + decay_steps, end_value=alpha * 0.2
    )
    same(keras_schedule, schedule)
