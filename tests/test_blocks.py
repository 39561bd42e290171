"""Every optimizer is a composition of blocks: each reuse of optax is proven here.

Where a preset is built from optax's own blocks, or equals an optax optimizer,
the trajectories must agree bit for bit on the shared test problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import compat
from tests import _problems

LR_SCHEDULE = optax.piecewise_constant_schedule(0.05, {4: 0.5, 9: 0.2})

SAME: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
    (
        "tf1_momentum=optax.sgd",
        lambda: compat.tf1_momentum(LR_SCHEDULE, 0.9),
        lambda: optax.sgd(LR_SCHEDULE, 0.9),
    ),
    (
        "tf1_momentum_nesterov=optax.sgd",
        lambda: compat.tf1_momentum(0.05, 0.9, use_nesterov=True),
        lambda: optax.sgd(0.05, 0.9, nesterov=True),
    ),
    (
        "torch_sgd_decay=chain(add_decayed_weights,sgd)",
        lambda: compat.torch_sgd(LR_SCHEDULE, 0.9, weight_decay=0.05),
        lambda: optax.chain(optax.add_decayed_weights(0.05), optax.sgd(LR_SCHEDULE, 0.9)),
    ),
    (
        "torch_sgd_no_momentum=optax.sgd",
        lambda: compat.torch_sgd(LR_SCHEDULE),
        lambda: optax.sgd(LR_SCHEDULE),
    ),
    (
        "keras_sgd_no_momentum=optax.sgd",
        lambda: compat.keras_sgd(0.05),
        lambda: optax.sgd(0.05),
    ),
    (
        # lr inside the velocity is the order of two optax stages (constant mu).
        "momentum=chain(scale_by_learning_rate,trace)",
        lambda: momentum_jax.momentum(LR_SCHEDULE, 0.9),
        lambda: optax.chain(optax.scale_by_learning_rate(LR_SCHEDULE), optax.trace(0.9)),
    ),
    (
        "scale_by_momentum=trace",
        lambda: optax.chain(momentum_jax.scale_by_momentum(0.9, nesterov=True), optax.scale(-0.05)),
        lambda: optax.chain(optax.trace(0.9, nesterov=True), optax.scale(-0.05)),
    ),
    (
        "qhm=chain(scale_by_qhm,scale_by_learning_rate)",
        lambda: momentum_jax.qhm(LR_SCHEDULE, 0.9, 0.7),
        lambda: optax.chain(
            momentum_jax.scale_by_qhm(0.9, 0.7), optax.scale_by_learning_rate(LR_SCHEDULE)
        ),
    ),
    (
        "aggmo=chain(scale_by_aggmo,scale_by_learning_rate)",
        lambda: momentum_jax.aggmo(LR_SCHEDULE, (0.0, 0.9, 0.99)),
        lambda: optax.chain(
            momentum_jax.scale_by_aggmo((0.0, 0.9, 0.99)),
            optax.scale_by_learning_rate(LR_SCHEDULE),
        ),
    ),
]


@pytest.mark.parametrize(("ours", "reference"), [s[1:] for s in SAME], ids=[s[0] for s in SAME])
def test_composition_is_bit_identical(
    ours: Callable[[], Any], reference: Callable[[], Any]
) -> None:
    got = _problems.trajectory(ours(), 15)
    expected = _problems.trajectory(reference(), 15)
    for a, b in zip(got, expected, strict=True):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key])


def test_qhm_block_is_the_documented_mix_of_gradient_and_average() -> None:
    # nu = 1 steps along the average alone; nu = 0 passes the gradient through.
    grads = [jnp.array([1.0, -2.0]), jnp.array([0.5, 1.0])]
    for nu in (1.0, 0.0):
        block = momentum_jax.scale_by_qhm(0.9, nu)
        state = block.init(jnp.zeros(2))
        expected_b = 0.9 * (0.1 * grads[0]) + 0.1 * grads[1]
        for g in grads:
            out, state = block.update(g, state)
        np.testing.assert_allclose(state.buffer, expected_b, rtol=1e-6)
        if nu == 0.0:
            np.testing.assert_array_equal(out, grads[1])
        else:
            np.testing.assert_allclose(out, expected_b, rtol=1e-6)


def test_aggmo_block_is_the_mean_of_its_buffers() -> None:
    block = momentum_jax.scale_by_aggmo((0.0, 0.5))
    state = block.init(jnp.zeros(2))
    for g in (jnp.array([1.0, 2.0]), jnp.array([1.0, -2.0])):
        out, state = block.update(g, state)
    np.testing.assert_allclose(out, (state.buffers[0] + state.buffers[1]) / 2, rtol=1e-7)
    np.testing.assert_allclose(state.buffers[1], [1.5, -1.0], rtol=1e-7)
