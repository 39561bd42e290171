"""Sharding checks on 8 simulated CPU devices, run in a fresh process.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` only takes effect if it
is set before JAX initialises its backend, so ``tests/test_sharding.py`` starts
this script with that variable and reads the JSON report it prints on its last
line of stdout. The script checks and reports; the assertions live in the test
module, so each failure names its transform and phase.

Report layout::

    {"devices": 8,
     "cases": {"<mesh>/<transform>": {"eager_init": [problems], "jit_init": [...],
                                      "update": [...], "collectives": [...]}},
     "detector": {...}, "zero1": {...}}

A problem is a string naming the state leaf, its sharding and the param's.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import momentum_jax
from momentum_jax import compat

# Mesh axis types (auto vs explicit sharding) arrived after JAX 0.4; older
# versions have auto axes only, so only those are checked there.
AxisType = getattr(jax.sharding, "AxisType", None)
HAS_EXPLICIT_AXES = AxisType is not None and hasattr(jax, "set_mesh")
MESH_KINDS = ("auto", "explicit") if HAS_EXPLICIT_AXES else ("auto",)


def auto_mesh(devices: np.ndarray, names: tuple[str, ...]) -> jax.sharding.Mesh:
    if AxisType is None:
        return jax.sharding.Mesh(devices, names)
    return jax.sharding.Mesh(devices, names, axis_types=(AxisType.Auto,) * len(names))


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")

# Each param has a distinct name; a state leaf mirrors the param whose name is
# the last key on its path (velocity["dp"], buffers[1]["dp"], ...).
PARAM_LAYOUT: dict[str, tuple[tuple[int, ...], Any, P]] = {
    "dp": ((16, 6), jnp.float32, P("data", None)),
    "mp": ((6, 16), jnp.float32, P(None, "model")),
    "both": ((8, 16), jnp.float32, P("data", "model")),
    "half": ((8, 8), jnp.bfloat16, P("data", "model")),
    "scalar": ((), jnp.float32, P()),
    "replicated": ((5,), jnp.float32, P()),
}


def _decay(count: Any) -> Any:
    return 0.05 / (1.0 + 0.1 * count)


def _rising(count: Any) -> Any:
    return jnp.minimum(0.5 + 0.05 * count, 0.95)


def _variants() -> dict[str, Callable[[], optax.GradientTransformation]]:
    return {
        "qhm": lambda: momentum_jax.qhm(_decay, 0.9, 0.7),
        "aggmo": lambda: momentum_jax.aggmo(_decay, (0.0, 0.9, 0.99)),
    }


def transforms() -> dict[str, Callable[[], optax.GradientTransformation]]:
    table: dict[str, Callable[[], optax.GradientTransformation]] = {
        "momentum": lambda: momentum_jax.momentum(_decay, 0.9, weight_decay=1e-3),
        "momentum_f32_accumulator": lambda: momentum_jax.momentum(
            0.05, 0.9, accumulator_dtype=jnp.float32
        ),
        "nesterov": lambda: momentum_jax.nesterov(_decay, _rising),
        "scale_by_momentum": lambda: momentum_jax.scale_by_momentum(0.9, dampening=0.1),
        "torch_sgd": lambda: compat.torch_sgd(_decay, 0.9, dampening=0.1, weight_decay=1e-3),
        "keras_sgd": lambda: compat.keras_sgd(_decay, 0.9, nesterov=True, weight_decay=1e-3),
        "tf1_momentum": lambda: compat.tf1_momentum(_decay, 0.9, use_nesterov=True),
        # Stochastic rounding draws its bits from iota and a hash: no communication.
        "momentum_bf16_accumulator_stochastic_rounding": lambda: momentum_jax.momentum(
            0.05, 0.9, accumulator_dtype=jnp.bfloat16, stochastic_rounding=True, seed=1
        ),
        "stochastic_round_params": lambda: optax.chain(
            momentum_jax.nesterov(_decay, 0.9, stochastic_rounding=True),
            momentum_jax.stochastic_round_params(seed=2),
        ),
    }
    table.update(_variants())
    return table


def _host_tree(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(shape).astype(dtype)
        for name, (shape, dtype, _) in PARAM_LAYOUT.items()
    }


def _place(host: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    return {
        name: jax.device_put(value, NamedSharding(mesh, PARAM_LAYOUT[name][2]))
        for name, value in host.items()
    }


def _describe(sharding: Any) -> str:
    spec = getattr(sharding, "spec", None)
    return f"{type(sharding).__name__}({spec})" if spec is not None else repr(sharding)


def sharding_problems(
    state: Any, params: dict[str, jax.Array], mesh: jax.sharding.Mesh, *, check_scalars: bool
) -> list[str]:
    """Every state leaf that is not laid out like the param it mirrors.

    Leaves that mirror no param (step counters) must live on the whole mesh,
    replicated, when ``check_scalars`` is set; an eagerly created counter is an
    uncommitted single-device scalar, which jit moves for free.
    """
    problems = []
    mirrored = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        where = jax.tree_util.keystr(path)
        last = path[-1] if path else None
        name = getattr(last, "key", None)
        if name in params:
            mirrored += 1
            param = params[name]
            if leaf.shape != param.shape:
                problems.append(f"{where}: shape {leaf.shape} != param shape {param.shape}")
            elif not leaf.sharding.is_equivalent_to(param.sharding, param.ndim):
                problems.append(
                    f"{where}: sharding {_describe(leaf.sharding)} is not the param's "
                    f"{_describe(param.sharding)}"
                )
            else:
                shard_bytes = leaf.addressable_shards[0].data.size * leaf.dtype.itemsize
                param_shard = param.addressable_shards[0].data.size * leaf.dtype.itemsize
                if shard_bytes != param_shard:
                    problems.append(f"{where}: {shard_bytes} bytes per device != {param_shard}")
        elif check_scalars:
            devices = leaf.sharding.device_set
            if devices != set(mesh.devices.flat) or not leaf.sharding.is_fully_replicated:
                problems.append(
                    f"{where}: counter-like leaf is {_describe(leaf.sharding)} on "
                    f"{len(devices)} device(s), expected replicated over the mesh"
                )
    if mirrored == 0:
        problems.append("no state leaf mirrors a param: the check saw nothing")
    return problems


def collectives_in(hlo: str) -> list[str]:
    return sorted(op for op in COLLECTIVES if op in hlo)


_COLLECTIVE_RESULT = re.compile(
    r"=\s*(\([^=]*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\("
)


def collective_results(hlo: str) -> list[str]:
    """``"<op> <result type>"`` for every collective instruction in the HLO."""
    return sorted({f"{m.group(2)} {m.group(1)}" for m in _COLLECTIVE_RESULT.finditer(hlo)})


def _step(tx: optax.GradientTransformation) -> Callable[..., Any]:
    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def check_transform(
    factory: Callable[[], optax.GradientTransformation], mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    tx = factory()
    params = _place(_host_tree(0), mesh)
    report: dict[str, Any] = {}
    report["eager_init"] = sharding_problems(tx.init(params), params, mesh, check_scalars=False)
    state = jax.jit(tx.init)(params)
    report["jit_init"] = sharding_problems(state, params, mesh, check_scalars=True)
    step = jax.jit(_step(tx), donate_argnums=(0, 1))
    grads = _place(_host_tree(1), mesh)
    report["collectives"] = collectives_in(step.lower(params, state, grads).compile().as_text())
    problems: list[str] = []
    for k in range(3):
        grads = _place(_host_tree(2 + k), mesh)
        params, state = step(params, state, grads)
        reference = _place(_host_tree(0), mesh)
        problems += [
            f"params: {p}" for p in sharding_problems(params, reference, mesh, check_scalars=True)
        ]
        problems += sharding_problems(state, reference, mesh, check_scalars=True)
    finite = all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves((params, state)))
    if not finite:
        problems.append("non-finite values after three steps")
    report["update"] = sorted(set(problems))
    return report


def guarded(mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """The NaN guard of docs/production.md: what optax.apply_if_finite costs on a mesh."""
    tx = optax.apply_if_finite(momentum_jax.nesterov(_decay, 0.9), max_consecutive_errors=10)
    params = _place(_host_tree(0), mesh)
    state = jax.jit(tx.init)(params)
    problems = sharding_problems(state, params, mesh, check_scalars=True)
    step = jax.jit(_step(tx), donate_argnums=(0, 1))
    hlo = step.lower(params, state, _place(_host_tree(1), mesh)).compile().as_text()
    bad = {**_host_tree(2), "both": np.full((8, 16), np.nan, np.float32)}
    before = jax.tree.map(np.asarray, (params, state.inner_state))
    params, state = step(params, state, _place(bad, mesh))
    after = jax.tree.map(np.asarray, (params, state.inner_state))
    unchanged = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )
    problems += sharding_problems(state, _place(_host_tree(0), mesh), mesh, check_scalars=True)
    return {
        "problems": problems,
        "collectives": collective_results(hlo),
        "skipped_bad_step": unchanged and int(state.notfinite_count) == 1,
    }


def detector_self_test(mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """The checks must notice a wrongly placed buffer and a real collective."""
    params = _place(_host_tree(0), mesh)
    replicated = NamedSharding(mesh, P())
    wrong = momentum_jax.MomentumState(
        count=jnp.zeros([], jnp.int32),
        velocity=jax.tree.map(lambda p: jax.device_put(jnp.zeros_like(p), replicated), params),
    )
    gather = jax.jit(lambda x: x, out_shardings=replicated)
    hlo = gather.lower(params["both"]).compile().as_text()
    return {
        "wrong_velocity_problems": len(sharding_problems(wrong, params, mesh, check_scalars=False)),
        "gather_collectives": collectives_in(hlo),
    }


def zero1(devices: np.ndarray) -> dict[str, Any]:
    """Replicated params, velocity sharded over the data axis (ZeRO stage 1).

    The recipe of docs/production.md, step for step.
    """
    mesh = auto_mesh(devices, ("data",))
    replicated = NamedSharding(mesh, P())
    over_data = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    params = jax.device_put(
        {"w": rng.standard_normal((64, 32), np.float32), "b": np.zeros(32, np.float32)},
        replicated,
    )
    optimizer = momentum_jax.nesterov(0.05, 0.9)
    # Split every buffer along its first axis; scalars (the counter) stay replicated.
    state_sharding = jax.tree.map(
        lambda leaf: over_data if leaf.ndim else replicated, jax.eval_shape(optimizer.init, params)
    )
    opt_state = jax.jit(optimizer.init, out_shardings=state_sharding)(params)
    placed = optimizer.init(params)
    placed = placed._replace(velocity=jax.device_put(placed.velocity, over_data))

    def apply_grads(params: Any, opt_state: Any, grads: Any) -> Any:
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    step = jax.jit(
        apply_grads,
        in_shardings=(replicated, state_sharding, replicated),
        out_shardings=(replicated, state_sharding),
        donate_argnums=(0, 1),
    )
    grads = jax.device_put(jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params), replicated)
    hlo = step.lower(params, opt_state, grads).compile().as_text()
    # The same step with a replicated velocity, for comparison.
    plain_step = jax.jit(apply_grads, donate_argnums=(0, 1))
    plain_state = optimizer.init(params)
    plain_hlo = plain_step.lower(params, plain_state, grads).compile().as_text()

    # A whole data-parallel step: gradients of a loss on a batch split over 'data'.
    def train(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        grads = jax.grad(lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2))(params)
        return apply_grads(params, opt_state, grads)

    x = jax.device_put(rng.standard_normal((128, 64), np.float32), over_data)
    y = jax.device_put(rng.standard_normal((128, 32), np.float32), over_data)
    full_hlo = (
        jax.jit(
            train,
            in_shardings=(replicated, state_sharding, over_data, over_data),
            out_shardings=(replicated, state_sharding),
        )
        .lower(params, opt_state, x, y)
        .compile()
        .as_text()
    )
    full_plain_hlo = jax.jit(train).lower(params, plain_state, x, y).compile().as_text()

    expected, expected_state = jax.tree.map(jnp.copy, (params, plain_state))
    for _ in range(3):
        params, opt_state = step(params, opt_state, grads)
        expected, expected_state = plain_step(
            *jax.device_put((expected, expected_state, grads), replicated)
        )
    velocity = opt_state.velocity["w"]
    return {
        "num_devices": len(mesh.devices.flat),
        "velocity_bytes_total": int(velocity.size * velocity.dtype.itemsize),
        "velocity_bytes_per_device": int(velocity.addressable_shards[0].data.nbytes),
        "param_bytes_per_device": int(params["w"].addressable_shards[0].data.nbytes),
        # As a list: str() of a PartitionSpec differs between JAX versions.
        "velocity_spec": list(velocity.sharding.spec),
        "count_replicated": bool(opt_state.count.sharding.is_fully_replicated),
        "device_put_spec": list(placed.velocity["w"].sharding.spec),
        "params_fully_replicated": all(
            p.sharding.is_fully_replicated for p in jax.tree.leaves(params)
        ),
        "collectives": collectives_in(hlo),
        "collective_results": collective_results(hlo),
        "plain_collectives": collectives_in(plain_hlo),
        "full_step_collectives": collectives_in(full_hlo),
        "full_plain_collectives": collectives_in(full_plain_hlo),
        "same_as_replicated_run": all(
            bool(np.array_equal(a, b))
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True)
        ),
    }


def main() -> None:
    devices = np.array(jax.devices())
    report: dict[str, Any] = {"devices": len(devices), "cases": {}}
    if len(devices) != 8:
        print(json.dumps(report))
        return
    grid = devices.reshape(2, 4)
    auto = auto_mesh(grid, ("data", "model"))
    only = set(sys.argv[1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, factory in transforms().items():
            if only and name not in only:
                continue
            report["cases"][f"auto/{name}"] = check_transform(factory, auto)
            if HAS_EXPLICIT_AXES:
                # Explicit axes: sharding is part of the type; jit needs the mesh set.
                explicit = jax.sharding.Mesh(
                    grid, ("data", "model"), axis_types=(AxisType.Explicit,) * 2
                )
                with jax.set_mesh(explicit):
                    report["cases"][f"explicit/{name}"] = check_transform(factory, explicit)
        # One 8-way axis: the guard's flag all-reduces then span one device group.
        # On a 2x4 mesh they span overlapping groups (rows and columns), which
        # XLA's simulated CPU devices can deadlock on when the host is busy.
        report["guarded"] = guarded(auto_mesh(devices.reshape(1, 8), ("data", "model")))
        report["detector"] = detector_self_test(auto)
        report["zero1"] = zero1(devices)
    report["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
