"""Gradient accumulation: ``gradient_accumulation_steps=K`` without a param-sized accumulator.

Every transform that takes the argument, with schedules, weight decay, dampening
and several buffers, follows ``optax.MultiSteps(transform, K)`` over 24 calls of
gradients that differ from call to call, all in one jitted ``lax.scan`` per
``K``; ``compat.keras_sgd`` follows the real Keras 3 ``SGD`` with its own
``gradient_accumulation_steps``. The state is the plain transform's plus one
int32 counter; a run saved mid-update (pickle, orbax, a checkpoint read without
a target) resumes bit for bit; ``K`` of 1 or ``None`` is today's transform,
operation for operation. Then ``inject_hyperparams``, ``vmap``, a device mesh,
stochastic rounding's bits, and what is refused.
"""

from __future__ import annotations

import itertools
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import compat
from tests import _problems, _subprocess
from tests._table import LR, MU, decay, rising

CALLS = 24
STEPS = (2, 4)
Factory = Callable[[Any], optax.GradientTransformation]


def _lr_stage(k: int | None) -> optax.GradientTransformation:
    """optax's learning-rate stage after a block, its schedule at completed updates."""
    return optax.scale_by_learning_rate(lambda count: decay(count // (k or 1)))


# Each case builds its transform from gradient_accumulation_steps (None: the plain one).
CASES: dict[str, Factory] = {
    "momentum_schedules_weight_decay": lambda k: momentum_jax.momentum(
        decay, rising, weight_decay=0.01, gradient_accumulation_steps=k
    ),
    "momentum_weight_decay": lambda k: momentum_jax.momentum(
        LR, MU, weight_decay=0.01, gradient_accumulation_steps=k
    ),
    # PyTorch's first step (b_1 = g_1, undamped) and dampening afterwards.
    "scale_by_momentum_dampening": lambda k: optax.chain(
        momentum_jax.scale_by_momentum(rising, dampening=0.1, gradient_accumulation_steps=k),
        _lr_stage(k),
    ),
    "aggmo": lambda k: momentum_jax.aggmo(decay, (0.0, 0.9, 0.99), gradient_accumulation_steps=k),
    "scale_by_aggmo": lambda k: optax.chain(
        momentum_jax.scale_by_aggmo((0.5, 0.9), gradient_accumulation_steps=k), _lr_stage(k)
    ),
    "torch_sgd": lambda k: compat.torch_sgd(
        decay, MU, 0.1, 0.01, maximize=True, gradient_accumulation_steps=k
    ),
    # A momentum schedule: PyTorch's rule for a momentum of 0 is on (never 0 here).
    "torch_sgd_momentum_schedule": lambda k: compat.torch_sgd(
        LR, rising, 0.1, gradient_accumulation_steps=k
    ),
    # A Python momentum 0 keeps no buffer, but accumulating keeps one (the mean gradient).
    "torch_sgd_no_momentum": lambda k: compat.torch_sgd(
        decay, 0.0, 0.1, 0.01, gradient_accumulation_steps=k
    ),
    "tf1_momentum": lambda k: compat.tf1_momentum(decay, rising, gradient_accumulation_steps=k),
    "keras_sgd": lambda k: compat.keras_sgd(
        LR, MU, weight_decay=0.01, gradient_accumulation_steps=k
    ),
    "keras_sgd_no_momentum": lambda k: compat.keras_sgd(
        LR, 0.0, weight_decay=0.01, gradient_accumulation_steps=k
    ),
}


def micro_grads(params: Any, t: Any) -> Any:
    """The gradient of call ``t``: params do not move inside an update, so it varies with t too."""
    grads = _problems.gradient()(params)
    return jax.tree.map(lambda g: g * (1.0 + 0.5 * jnp.sin(t)) + 0.1 * jnp.cos(3.0 * t), grads)


def trajectories(txs: dict[str, optax.GradientTransformation], calls: int = CALLS) -> Any:
    """The params after each call, per transform: one jitted ``lax.scan`` steps them all."""

    def body(carry: Any, t: jax.Array) -> Any:
        new = {}
        for name, tx in txs.items():
            params, state = carry[name]
            updates, state = tx.update(micro_grads(params, t), state, params)
            new[name] = (optax.apply_updates(params, updates), state)
        return new, {name: params for name, (params, _) in new.items()}

    start = {
        name: (_problems.initial_params(), tx.init(_problems.initial_params()))
        for name, tx in txs.items()
    }
    times = jnp.arange(calls, dtype=jnp.float32)
    _, out = jax.jit(lambda carry: jax.lax.scan(body, carry, times))(start)
    return jax.device_get(out)


@pytest.fixture(scope="module", params=STEPS, ids=[f"K={k}" for k in STEPS])
def runs(request: pytest.FixtureRequest) -> tuple[int, Any]:
    k = request.param
    txs = {}
    for name, make in CASES.items():
        txs[name] = make(k)
        txs[f"{name}/multisteps"] = optax.MultiSteps(make(None), k).gradient_transformation()
    return k, trajectories(txs)


@pytest.mark.parametrize("case", list(CASES))
def test_follows_optax_multisteps(case: str, runs: tuple[int, Any]) -> None:
    k, out = runs
    ours, reference = out[case], out[f"{case}/multisteps"]
    chex.assert_trees_all_close(ours, reference, rtol=1e-5, atol=1e-6)
    for key, path in ours.items():
        moved = [not np.array_equal(a, b) for a, b in itertools.pairwise(path)]
        # The params move on every K-th call only, and then visibly.
        assert moved == [(t + 2) % k == 0 for t in range(CALLS - 1)], f"{case}: {key}"
    assert np.abs(ours["w"][-1] - _problems.W0).max() > 0.05


@pytest.mark.parametrize("case", list(CASES))
def test_the_state_is_the_plain_one_and_a_counter(case: str) -> None:
    """One int32 more than the plain transform: no param-sized accumulator, where
    ``optax.MultiSteps`` keeps one (without momentum the buffer is that accumulator)."""
    params = _problems.initial_params()
    make = CASES[case]
    plain, ours = make(None).init(params), make(4).init(params)
    multisteps = optax.MultiSteps(make(None), 4).gradient_transformation().init(params)
    assert _nbytes(multisteps) >= _nbytes(plain) + _nbytes(params)
    if case.endswith("no_momentum"):  # the buffer and its count, as a momentum would keep
        assert _nbytes(ours) == _nbytes(plain) + _nbytes(params) + 4 + 4
        return
    assert _nbytes(ours) == _nbytes(plain) + 4
    block = [x for x in jax.tree.leaves(plain, is_leaf=_is_block) if _is_block(x)]
    chex.assert_trees_all_equal_shapes_and_dtypes(optax.tree_utils.tree_get(ours, "inner"), *block)


def _nbytes(tree: Any) -> int:
    return sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree))


def _is_block(x: Any) -> bool:
    states = (momentum_jax.MomentumState, momentum_jax.AggMoState, compat.TorchMomentumState)
    return isinstance(x, states)


@pytest.mark.parametrize("case", list(CASES))
def test_one_call_per_update_is_the_plain_transform(case: str) -> None:
    """``K = 1`` and ``None`` (the default): the same state and, operation for operation,
    the same program, so the same bits."""
    params = _problems.initial_params()
    ones, plain = CASES[case](1), CASES[case](None)
    state = plain.init(params)
    chex.assert_trees_all_equal_shapes_and_dtypes(ones.init(params), state)
    chex.assert_trees_all_equal_structs(ones.init(params), state)
    grads = micro_grads(params, 0.5)
    assert str(jax.make_jaxpr(ones.update)(grads, state, params)) == str(
        jax.make_jaxpr(plain.update)(grads, state, params)
    )


# --- the real Keras 3 -------------------------------------------------------------


def _keras_schedule(count: Any) -> Any:
    return 0.08 * 0.7 ** (count / 5)


@pytest.mark.parametrize("schedule", [False, True], ids=["constant_lr", "exponential_decay"])
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"momentum": 0.9}, id="momentum"),
        pytest.param({"momentum": 0.9, "weight_decay": 0.05}, id="weight_decay"),
        pytest.param({"momentum": 0.0, "weight_decay": 0.05}, id="plain_sgd"),
    ],
)
def test_keras_sgd_matches_keras(options: dict[str, Any], schedule: bool) -> None:
    """Keras evaluates its schedule at its call count (K n + K - 1 when update n is made).

    Keras' own stateless step, jitted: its eager ``apply_gradients`` gives the same numbers.
    """
    keras = pytest.importorskip("keras")
    k = 3
    lr: Any = 0.08
    if schedule:
        lr = keras.optimizers.schedules.ExponentialDecay(0.08, decay_steps=5, decay_rate=0.7)
    opt = keras.optimizers.SGD(learning_rate=lr, gradient_accumulation_steps=k, **options)
    keys = ("w", "b")
    variables = [keras.Variable(_problems.initial_params()[key]) for key in keys]
    opt.build(variables)
    params, slots = [v.value for v in variables], [v.value for v in opt.variables]
    keras_step = jax.jit(opt.stateless_apply)
    reference = []
    for t in range(18):
        grads = micro_grads(dict(zip(keys, params, strict=True)), float(t))
        params, slots = keras_step(slots, [grads[key] for key in keys], params)
        reference.append(dict(zip(keys, map(np.asarray, params), strict=True)))
    tx = compat.keras_sgd(
        _keras_schedule if schedule else 0.08, gradient_accumulation_steps=k, **options
    )
    ours = trajectories({"ours": tx}, 18)["ours"]
    _problems.assert_trajectories_close(
        [{key: p[t] for key, p in ours.items()} for t in range(18)], reference
    )
    assert np.abs(ours["w"][-1] - _problems.W0).max() > 0.3


# --- resuming, wrappers, devices ------------------------------------------------------


def _resumable() -> optax.GradientTransformation:
    """Stochastically rounded bfloat16 buffers and a learning-rate stage that counts calls."""
    return momentum_jax.aggmo(
        decay,
        (0.5, 0.9),
        accumulator_dtype=jnp.bfloat16,
        stochastic_rounding=True,
        seed=3,
        gradient_accumulation_steps=4,
    )


def _run(step: Callable[..., Any], params: Any, state: Any, calls: range) -> Any:
    for t in calls:
        params, state = step(params, state, micro_grads(params, float(t)))
    return params, state


def test_a_run_saved_mid_update_resumes_bit_for_bit(tmp_path: Path) -> None:
    ocp = pytest.importorskip("orbax.checkpoint")
    tx, params = _resumable(), _problems.initial_params()
    step = _problems.jitted_step(tx)
    straight = _run(step, params, tx.init(params), range(20))
    middle = _run(step, params, tx.init(params), range(10))  # mid-update: call 3 of 4 is next
    assert int(middle[1][0].micro_step) == 2
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "checkpoint", middle)
    with ocp.StandardCheckpointer() as checkpointer:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, middle)
        from_orbax = checkpointer.restore(tmp_path / "checkpoint", target)
    saved = {
        "pickle": pickle.loads(pickle.dumps(jax.device_get(middle))),
        "orbax": from_orbax,
        # A checkpoint read without a target: nested dicts and lists.
        "restore_state": (
            middle[0],
            momentum_jax.restore_state(_problems.plain(middle[1]), tx, params),
        ),
    }
    for how, (p, state) in saved.items():
        resumed = _run(step, p, state, range(10, 20))
        _problems.assert_trees_equal(resumed, straight, how)


@pytest.mark.parametrize(("saved", "resumed"), [(None, 2), (2, None), (2, 1)])
def test_restoring_with_or_without_accumulation_names_the_argument(
    saved: int | None, resumed: int | None
) -> None:
    params = _problems.initial_params()
    old = compat.torch_sgd(0.1, 0.9, gradient_accumulation_steps=saved)
    new = compat.torch_sgd(0.1, 0.9, gradient_accumulation_steps=resumed)
    with pytest.raises(ValueError, match=r"state\[0\] was saved with another gradient_acc"):
        momentum_jax.restore_state(old.init(params), new, params)


def test_a_micro_step_beyond_k_completes_an_update_instead_of_stalling() -> None:
    # E.g. a state saved with K = 8 after five calls, restored into K = 2: read modulo 2.
    tx = momentum_jax.momentum(0.1, 0.9, gradient_accumulation_steps=2)
    params = _problems.initial_params()
    state = tx.init(params)
    state = state._replace(micro_step=jnp.int32(5))
    g = _problems.gradient()(params)
    updates = []
    for _ in range(4):
        u, state = tx.update(g, state, params)
        updates.append(u)
    # Call 1 is the last of its update (5 % 2 == 1): v1 = alpha g / 2, u = -v1. Calls 2 and 3
    # make the next update: v2 = mu v1 + alpha (g + g) / 2, u = -v2; call 4 starts another.
    v1 = jax.tree.map(lambda x: 0.1 * x / 2, g)
    v2 = jax.tree.map(lambda v, x: 0.9 * v + 0.1 * x, v1, g)
    zero = jax.tree.map(jnp.zeros_like, g)
    for got, want in zip(updates, [v1, zero, v2, zero], strict=True):
        chex.assert_trees_all_close(got, jax.tree.map(jnp.negative, want), rtol=1e-6)
    assert int(state.inner.count) == 2


def test_inject_hyperparams_with_the_steps_static() -> None:
    static = ("gradient_accumulation_steps",)
    momentum = optax.inject_hyperparams(momentum_jax.momentum, static_args=static)
    torch_sgd = optax.inject_hyperparams(compat.torch_sgd, static_args=static)
    out = trajectories(
        {
            "momentum": momentum_jax.momentum(LR, MU, gradient_accumulation_steps=4),
            "momentum/injected": momentum(
                learning_rate=LR, momentum=MU, gradient_accumulation_steps=4
            ),
            # An injected momentum is an array: PyTorch's rule for a momentum of 0 is on.
            "torch_sgd": compat.torch_sgd(LR, MU, 0.1, gradient_accumulation_steps=4),
            "torch_sgd/injected": torch_sgd(
                lr=LR, momentum=MU, dampening=0.1, gradient_accumulation_steps=4
            ),
            # torch_sgd's default momentum 0, injected: plain SGD on the mean gradient.
            "sgd": compat.torch_sgd(LR, gradient_accumulation_steps=4),
            "sgd/injected": torch_sgd(lr=LR, gradient_accumulation_steps=4),
        },
        12,
    )
    chex.assert_trees_all_close(out["momentum/injected"], out["momentum"], rtol=1e-6)
    chex.assert_trees_all_close(out["torch_sgd/injected"], out["torch_sgd"], rtol=1e-6)
    chex.assert_trees_all_close(out["sgd/injected"], out["sgd"], rtol=1e-6)
    # Left out, it is no hyperparameter: the injected state of earlier versions.
    state = optax.inject_hyperparams(momentum_jax.momentum)(LR, MU).init(jnp.zeros(2))
    assert set(state.hyperparams) == {"learning_rate", "momentum", "weight_decay", "seed"}
    injected = optax.inject_hyperparams(momentum_jax.momentum)(
        learning_rate=LR, gradient_accumulation_steps=4
    )
    with pytest.raises(
        TypeError,
        match=re.escape(
            "momentum_jax.momentum: gradient_accumulation_steps must be an integer in "
            "[1, 2147483647] or None, got Array(4, dtype=int32, weak_type=True); under "
            "optax.inject_hyperparams pass static_args=('gradient_accumulation_steps',)."
        ),
    ):
        injected.init(jnp.zeros(2))


def test_vmap_over_an_ensemble() -> None:
    tx = CASES["momentum_schedules_weight_decay"](2)
    members = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), _problems.initial_params())

    def run(params: Any) -> Any:
        state = tx.init(params)
        for t in range(6):
            updates, state = tx.update(micro_grads(params, float(t)), state, params)
            params = optax.apply_updates(params, updates)
        return params, state

    together = jax.jit(jax.vmap(run))(members)
    for i in range(2):
        alone = jax.jit(run)(jax.tree.map(lambda p, i=i: p[i], members))
        chex.assert_trees_all_close(jax.tree.map(lambda p, i=i: p[i], together), alone, rtol=1e-6)


_MESH_SCRIPT = """
import json, jax, jax.numpy as jnp, numpy as np, optax, momentum_jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
place = {"w": NamedSharding(mesh, P("data", "model")), "b": NamedSharding(mesh, P())}
params = {"w": jnp.ones((8, 4)), "b": jnp.ones(4)}
params = {key: jax.device_put(value, place[key]) for key, value in params.items()}
tx = momentum_jax.aggmo(lambda c: 0.1 / (1 + c), (0.5, 0.9), accumulator_dtype=jnp.bfloat16,
                        stochastic_rounding=True, gradient_accumulation_steps=3)
state = jax.jit(tx.init)(params)
def step(params, state):
    updates, state = tx.update(jax.tree.map(lambda p: p * p, params), state, params)
    return optax.apply_updates(params, updates), state
compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state).compile()
hlo = compiled.as_text()
for _ in range(4):
    params, state = compiled(params, state)
buffers = state[0].inner.buffers
print(json.dumps({
    "collectives": [op for op in ("all-reduce", "all-gather", "all-to-all",
                    "collective-permute", "reduce-scatter") if op in hlo],
    "placed": [bool(b[key].sharding.is_equivalent_to(params[key].sharding, b[key].ndim))
               for b in buffers for key in place],
    "count": int(state[0].inner.count), "micro_step": int(state[0].micro_step),
}))
"""


@pytest.mark.slow  # a 4-device subprocess
def test_sharded_params_need_no_communication() -> None:
    report = _subprocess.run_json(["-c", _MESH_SCRIPT], devices=4, what="mesh script")
    assert report == {"collectives": [], "placed": [True] * 4, "count": 1, "micro_step": 1}


# --- stochastic rounding ---------------------------------------------------------------


def test_stochastic_rounding_draws_new_bits_on_every_call() -> None:
    """Each call of an update rounds a value halfway between two bfloat16 neighbours: the
    elements rounded up on the second call are not those of the first."""
    tx = momentum_jax.scale_by_momentum(
        0.9,
        accumulator_dtype=jnp.bfloat16,
        stochastic_rounding=True,
        seed=1,
        gradient_accumulation_steps=2,
    )
    params = jnp.zeros(4096)
    state = tx.init(params)
    half = 2.0**-8  # half a bfloat16 ulp at 1
    _, state = tx.update(jnp.full_like(params, 2 * (1 + half)), state)  # b = 1 + half
    first = np.asarray(state.inner.velocity, np.float32)
    _, state = tx.update(jnp.full_like(params, 2 * half), state)  # b = that + half
    second = np.asarray(state.inner.velocity, np.float32)
    up_first, up_second = first > 1, second - first > half
    assert 0.45 < up_first.mean() < 0.55
    assert 0.45 < up_second.mean() < 0.55
    assert 0.4 < (up_first == up_second).mean() < 0.6  # the same bits would agree everywhere


def test_int8_buffers_accumulate_like_the_float32_multisteps() -> None:
    """Int8 codes for the large array, quantized stochastically on every call: the trajectory
    stays within a few codes of MultiSteps over float32 buffers, the state is the plain int8
    state and a counter, and a run saved mid-update resumes bit for bit."""
    int8 = {"accumulator_dtype": jnp.int8, "stochastic_rounding": True, "seed": 5}
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.standard_normal((32, 256)), jnp.float32),  # codes and 32 scales
        "b": jnp.asarray(rng.standard_normal(256), jnp.float32),  # small: float32
    }
    target = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)

    def grads(p: Any, t: int) -> Any:
        return jax.tree.map(lambda x, y: (x - y) * (1.0 + 0.5 * np.sin(t)), p, target)

    def run(tx: optax.GradientTransformation, calls: range, start: Any = None) -> Any:
        step = _problems.jitted_step(tx)
        p, state = start or (params, tx.init(params))
        path = []
        for t in calls:
            p, state = step(p, state, grads(p, t))
            path.append(p)
        return path, (p, state)

    ours = momentum_jax.momentum(LR, MU, weight_decay=0.01, **int8, gradient_accumulation_steps=4)
    reference = optax.MultiSteps(momentum_jax.momentum(LR, MU, weight_decay=0.01), 4)
    path, (_, state) = run(ours, range(CALLS))
    expected, _ = run(reference.gradient_transformation(), range(CALLS))
    moved = max(float(jnp.abs(path[-1]["w"] - params["w"]).max()), 0.5)
    for t, (a, b) in enumerate(zip(path, expected, strict=True)):
        gap = max(float(jnp.abs(a[k] - b[k]).max()) for k in a)
        assert gap < 0.02 * moved, (t, gap, moved)
    assert isinstance(state.inner.velocity["w"], momentum_jax.Int8Buffer)
    plain = momentum_jax.momentum(LR, MU, weight_decay=0.01, **int8).init(params)
    assert _nbytes(ours.init(params)) == _nbytes(plain) + 4
    # Saved after call 10 (mid-update), resumed from numpy arrays.
    _, middle = run(ours, range(10))
    saved = jax.tree.map(jnp.asarray, jax.tree.map(np.asarray, jax.device_get(middle)))
    resumed, _ = run(ours, range(10, CALLS), saved)
    _problems.assert_trees_equal(resumed[-1], path[-1], "resumed")


# --- what is refused ---------------------------------------------------------------


def test_zero_momentum_of_torch_sgd_makes_that_update_nan() -> None:
    """PyTorch's output at a momentum of 0 is the mean gradient, which no state keeps."""
    tx = compat.torch_sgd(
        LR, lambda count: jnp.where(count == 1, 0.0, MU), gradient_accumulation_steps=2
    )
    state, outputs = tx.init(jnp.zeros(2)), []
    for t in range(6):
        updates, state = tx.update(jnp.asarray([1.0, -2.0]) * (t + 1), state)
        outputs.append(bool(np.isfinite(updates).all()))
    assert outputs == [True, True, True, False, True, True]


BAD_STEPS = [
    (True, TypeError, "must be an integer in [1, 2147483647] or None, got True."),
    (2.0, TypeError, "must be an integer in [1, 2147483647] or None, got 2.0."),
    (
        np.asarray(2),
        TypeError,
        "must be an integer in [1, 2147483647] or None, got array(2); under "
        "optax.inject_hyperparams pass static_args=('gradient_accumulation_steps',).",
    ),
    (0, ValueError, "must be in [1, 2147483647], got gradient_accumulation_steps=0."),
    (-3, ValueError, "must be in [1, 2147483647], got gradient_accumulation_steps=-3."),
]
TAKERS = {
    "momentum_jax.momentum": lambda **kw: momentum_jax.momentum(LR, **kw),
    "momentum_jax.scale_by_momentum": momentum_jax.scale_by_momentum,
    "momentum_jax.aggmo": lambda **kw: momentum_jax.aggmo(LR, **kw),
    "momentum_jax.scale_by_aggmo": momentum_jax.scale_by_aggmo,
    "momentum_jax.compat.torch_sgd": lambda **kw: compat.torch_sgd(LR, MU, **kw),
    "momentum_jax.compat.keras_sgd": compat.keras_sgd,
    "momentum_jax.compat.tf1_momentum": lambda **kw: compat.tf1_momentum(LR, MU, **kw),
}


@pytest.mark.parametrize("name", list(TAKERS))
@pytest.mark.parametrize(("value", "error", "message"), BAD_STEPS, ids=repr)
def test_bad_steps_are_refused_at_build_time(
    name: str, value: Any, error: type[Exception], message: str
) -> None:
    expected = f"{name}: gradient_accumulation_steps {message}"
    with pytest.raises(error, match=re.escape(expected)):
        TAKERS[name](gradient_accumulation_steps=value)


NESTEROV = {
    "momentum_jax.momentum": lambda k: momentum_jax.momentum(
        LR, MU, nesterov=True, gradient_accumulation_steps=k
    ),
    "momentum_jax.nesterov": lambda k: momentum_jax.nesterov(LR, MU, gradient_accumulation_steps=k),
    "momentum_jax.scale_by_momentum": lambda k: momentum_jax.scale_by_momentum(
        MU, nesterov=True, gradient_accumulation_steps=k
    ),
    "momentum_jax.compat.torch_sgd": lambda k: compat.torch_sgd(
        LR, MU, nesterov=True, gradient_accumulation_steps=k
    ),
    "momentum_jax.compat.keras_sgd": lambda k: compat.keras_sgd(
        LR, MU, nesterov=True, gradient_accumulation_steps=k
    ),
    "momentum_jax.compat.tf1_momentum": lambda k: compat.tf1_momentum(
        LR, MU, use_nesterov=True, gradient_accumulation_steps=k
    ),
}


@pytest.mark.parametrize("name", list(NESTEROV))
def test_nesterov_refuses_to_accumulate_and_names_multisteps(name: str) -> None:
    message = (
        f"{name}: the Nesterov step needs the mean gradient, which gradient_accumulation_steps=4 "
        "does not keep; use optax.MultiSteps(transform, every_k_schedule=4) instead."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        NESTEROV[name](4)
    NESTEROV[name](1)  # one call per update is no accumulation


@pytest.mark.parametrize("name", list(TAKERS))
def test_the_packed_layout_is_refused_with_the_fix(name: str) -> None:
    message = f"{name}: gradient_accumulation_steps=2 needs layout='per_leaf', got 'packed'."
    with pytest.raises(ValueError, match=re.escape(message)):
        TAKERS[name](gradient_accumulation_steps=2, layout="packed")


@pytest.mark.parametrize("factory", [momentum_jax.qhm, momentum_jax.lion])
def test_qhm_and_lion_do_not_take_it(factory: Callable[..., Any]) -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "unexpected keyword argument 'gradient_accumulation_steps'. Wrap the transform "
            "in optax.MultiSteps instead."
        ),
    ):
        factory(LR, gradient_accumulation_steps=2)
