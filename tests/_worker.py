"""The worker library: what runs in a fresh JAX process, for the sharding, checkpoint and multi-process tests.

A fresh process is needed where JAX must start with other flags (the device
count is read once, when JAX initialises), or where a run must resume from
nothing but files. Each task checks and reports; the assertions live in the
test modules, so each failure names its transform and phase.

``python tests/_worker.py TASK ...``:

* ``sharding`` (8 simulated devices, ``tests/test_sharding.py``): every row of
  :data:`tests._table.SHARDING_ROWS` on a 2x4 ``('data', 'model')`` mesh with
  auto and with explicit axes (eager and jitted init, donated jitted steps,
  the compiled update's collectives); the packed layout's buffers on a mesh;
  the NaN guard and ZeRO-1 recipes of docs/production.md; and a self-test of
  the checks. Prints a JSON report on its last line.
* ``checkpoint save DIR FORMATS`` and ``checkpoint resume DIR FORMATS``
  (``tests/test_checkpoint.py``): train each row of
  :data:`tests._table.CHECKPOINT_ROWS`, save after ``SPLIT`` steps (orbax,
  pickle, npz), and finish the run in a new process from the files alone.
* ``multihost SPEC`` (``tests/test_multihost.py``): one process of a
  multi-process run joined by ``jax.distributed``; see :func:`multihost`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the checkout's tests package
    sys.path.insert(0, str(ROOT))

import momentum_jax  # noqa: E402
from tests._problems import plain  # noqa: E402
from tests._table import CHECKPOINT_ROWS, MESH_ROWS, SHARDING_ROWS, Row  # noqa: E402

# --- meshes and what a state on a mesh must look like ---------------------------------

# Mesh axis types (auto vs explicit sharding) arrived after JAX 0.4; older
# versions have auto axes only, so only those are checked there.
AxisType = getattr(jax.sharding, "AxisType", None)
HAS_EXPLICIT_AXES = AxisType is not None and hasattr(jax, "set_mesh")
MESH_KINDS = ("auto", "explicit") if HAS_EXPLICIT_AXES else ("auto",)
AXES = ("data", "model")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
# The flat arrays of the packed layout, by dtype name.
PACKS = ("float32", "bfloat16", "float16", "complex64")
EMPTY_STATE = "no state leaf mirrors a param: the check saw nothing"

Spec = dict[str, tuple[tuple[int, ...], Any, P]]


def make_mesh(devices: np.ndarray, names: tuple[str, ...] = AXES, kind: str = "auto") -> Any:
    if AxisType is None:
        return jax.sharding.Mesh(devices, names)
    axis_type = AxisType.Explicit if kind == "explicit" else AxisType.Auto
    return jax.sharding.Mesh(devices, names, axis_types=(axis_type,) * len(names))


def host_tree(spec: Spec, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: (scale * rng.standard_normal(shape)).astype(dtype)
        for name, (shape, dtype, _) in spec.items()
    }


def place(host: dict[str, np.ndarray], spec: Spec, mesh: Any) -> dict[str, jax.Array]:
    """Global arrays laid out as ``spec`` says; each process builds only its own shards."""
    return {
        name: jax.make_array_from_callback(
            value.shape, NamedSharding(mesh, spec[name][2]), lambda index, v=value: v[index]
        )
        for name, value in host.items()
    }


def describe(sharding: Any) -> str:
    spec = getattr(sharding, "spec", None)
    return f"{type(sharding).__name__}({spec})" if spec is not None else repr(sharding)


def sharding_problems(
    state: Any, params: dict[str, jax.Array], mesh: Any, *, eager: bool, packed: bool = False
) -> list[str]:
    """Every leaf of an optimizer state not laid out as documented (docs/production.md).

    A leaf whose last key names a param (``velocity['w1']``) has that param's
    shape, sharding and bytes per device; so do the codes of an int8 buffer
    (``velocity['w1'].codes``), and its scales have the param's sharding. The packed buffers (keys
    ``'float32'``, ``'bfloat16'``, ...) hold the small replicated params' buffers
    and are replicated over the whole mesh. Step counters are replicated over
    the mesh after a jitted init; an eager init makes them uncommitted scalars,
    which jit places itself. ``state`` must be the optimizer's state alone: a
    state with no param-shaped leaf is reported (the check saw nothing).
    """
    problems = []
    mirrored = packs = 0
    everywhere = set(mesh.devices.flat)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        where = jax.tree_util.keystr(path)
        name = getattr(path[-1], "key", None) if path else None
        field = getattr(path[-1], "name", None) if path else None
        if field in ("codes", "scales") and getattr(path[-2], "key", None) in params:
            param = params[path[-2].key]
            mirrored += field == "codes"
            if field == "codes" and leaf.shape != param.shape:
                problems.append(f"{where}: shape {leaf.shape} != param shape {param.shape}")
            elif not leaf.sharding.is_equivalent_to(param.sharding, param.ndim):
                problems.append(
                    f"{where}: sharding {describe(leaf.sharding)} is not the param's "
                    f"{describe(param.sharding)}"
                )
            continue
        if name in params:
            mirrored += 1
            param = params[name]
            if leaf.shape != param.shape:
                problems.append(f"{where}: shape {leaf.shape} != param shape {param.shape}")
            elif not leaf.sharding.is_equivalent_to(param.sharding, param.ndim):
                problems.append(
                    f"{where}: sharding {describe(leaf.sharding)} is not the param's "
                    f"{describe(param.sharding)}"
                )
            else:
                shard = leaf.addressable_shards[0].data.size * leaf.dtype.itemsize
                param_shard = param.addressable_shards[0].data.size * leaf.dtype.itemsize
                if shard != param_shard:
                    problems.append(f"{where}: {shard} bytes per device != {param_shard}")
            continue
        if name in PACKS:
            packs += 1
        elif eager:
            continue
        devices = leaf.sharding.device_set
        if devices != everywhere or not leaf.sharding.is_fully_replicated:
            problems.append(
                f"{where}: {describe(leaf.sharding)} on {len(devices)} device(s), expected "
                "replicated over the mesh"
            )
    if mirrored == 0:
        problems.append(EMPTY_STATE)
    if packed and not packs:
        problems.append("a packed state without packed buffers: the check saw none")
    return problems


def collectives_in(hlo: str) -> list[str]:
    return sorted(op for op in COLLECTIVES if op in hlo)


_COLLECTIVE_RESULT = re.compile(
    r"=\s*(\([^=]*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\("
)


def collective_results(hlo: str) -> list[str]:
    """``"<op> <result type>"`` for every collective instruction in the HLO."""
    return sorted({f"{m.group(2)} {m.group(1)}" for m in _COLLECTIVE_RESULT.finditer(hlo)})


def apply_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
    """``(params, state, grads) -> (params, state)``: one optimizer step."""

    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


_REPLICATE: dict[Any, Any] = {}


def to_host(x: jax.Array) -> np.ndarray:
    """The whole array, on every process: gathered where the process holds only part of it."""
    if not x.sharding.is_fully_replicated:
        mesh = x.sharding.mesh
        if mesh not in _REPLICATE:
            _REPLICATE[mesh] = jax.jit(lambda v: v, out_shardings=NamedSharding(mesh, P()))
        # Every shard done before the next program: see check_row on out-of-order collectives.
        x = _REPLICATE[mesh](x).block_until_ready()
    return np.asarray(x.addressable_data(0))


def digests(tree: Any) -> dict[str, dict[str, str]]:
    """sha256 of every shard this process holds, by leaf path and the device's mesh position.

    No collective: each process reads its own devices. The union over the
    processes covers the whole mesh, as one process with all 8 devices does.
    (Device ids differ between the two: those of process 1 are offset.)
    """
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        positions = {d.id: i for i, d in np.ndenumerate(leaf.sharding.mesh.devices)}
        shards = {}
        for shard in leaf.addressable_shards:
            value = np.asarray(shard.data)
            digest = hashlib.sha256(value.tobytes()).hexdigest()[:24]
            where = ",".join(str(i) for i in positions[shard.device.id])
            shards[where] = f"{value.dtype}{list(value.shape)}:{digest}"
        out[jax.tree_util.keystr(path)] = shards
    return out


def zero1_specs(tx: optax.GradientTransformation, params: Any, mesh: Any, axes: Any) -> Any:
    """ZeRO stage 1: each buffer split along its first axis over ``axes`` where that divides.

    Counters (scalars) and buffers whose first axis does not divide stay replicated.
    """
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(axes))
    size = int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
    return jax.tree.map(
        lambda leaf: split if leaf.ndim and leaf.shape[0] % size == 0 else replicated,
        jax.eval_shape(tx.init, params),
    )


# --- sharding: one process, 8 simulated devices ---------------------------------------

# Each param has a distinct name; a state leaf mirrors the param whose name is
# the last key on its path (velocity["dp"], buffers[1]["dp"], ...).
SHARDED: Spec = {
    "dp": ((16, 6), jnp.float32, P("data", None)),
    "mp": ((6, 16), jnp.float32, P(None, "model")),
    "both": ((8, 16), jnp.float32, P("data", "model")),
    "half": ((8, 8), jnp.bfloat16, P("data", "model")),
    "scalar": ((), jnp.float32, P()),
    "replicated": ((5,), jnp.float32, P()),
    # Large enough for an int8 buffer: blocks of 256 along 'model', 512 elements per device.
    "wide": ((4, 2048), jnp.float32, P("data", "model")),
    # A conv kernel (out, in, h, w): int8 blocks of 256 elements from the input channels on,
    # 16 input channels by 4 x 4: one block per device.
    "conv": ((8, 64, 4, 4), jnp.float32, P("data", "model")),
}
# The packed layout on a 1x8 mesh: the kernel (more than 2**16 elements) keeps
# its own buffer, split over 'model'; the replicated vectors are packed.
PACKED_ON_MESH: Spec = {
    "kernel": ((256, 512), jnp.float32, P(None, "model")),
    "bias": ((64,), jnp.float32, P()),
    "norm": ((16,), jnp.float32, P()),
}


def check_row(row: Row, mesh: Any) -> dict[str, Any]:
    """Init eagerly and under jit, and three donated jitted steps: every leaf where it belongs."""
    tx = row.build()
    params = place(host_tree(SHARDED, 0), SHARDED, mesh)
    report: dict[str, Any] = {}
    report["eager_init"] = sharding_problems(tx.init(params), params, mesh, eager=True)
    state = jax.jit(tx.init)(params)
    report["jit_init"] = sharding_problems(state, params, mesh, eager=False)
    grads = place(host_tree(SHARDED, 1), SHARDED, mesh)
    step = jax.jit(apply_step(tx), donate_argnums=(0, 1)).lower(params, state, grads).compile()
    report["collectives"] = collectives_in(step.as_text())
    reference = place(host_tree(SHARDED, 0), SHARDED, mesh)
    problems: list[str] = []
    for k in range(3):
        params, state = step(params, state, place(host_tree(SHARDED, 2 + k), SHARDED, mesh))
        problems += [
            f"params: {p}" for p in sharding_problems(params, reference, mesh, eager=False)
        ]
        problems += sharding_problems(state, reference, mesh, eager=False)
    # Checked on the host: a device-side reduction per leaf of a 2x4 mesh would be
    # one program with all-reduces over row groups and the next over column groups,
    # which XLA's simulated CPU devices (seen on jax 0.4.35) can run out of order
    # across devices and deadlock on when the host is busy.
    if not all(
        np.isfinite(np.asarray(x).astype(np.float32)).all()
        for x in jax.tree.leaves((params, state))
    ):
        problems.append("non-finite values after three steps")
    report["update"] = sorted(set(problems))
    return report


def guarded(mesh: Any) -> dict[str, Any]:
    """The NaN guard of docs/production.md: what optax.apply_if_finite costs on a mesh."""
    row = next(row for row in SHARDING_ROWS if row.public is momentum_jax.nesterov)
    tx = optax.apply_if_finite(row.build(), max_consecutive_errors=10)
    params = place(host_tree(SHARDED, 0), SHARDED, mesh)
    state = jax.jit(tx.init)(params)
    problems = sharding_problems(state, params, mesh, eager=False)
    step = jax.jit(apply_step(tx), donate_argnums=(0, 1))
    grads = place(host_tree(SHARDED, 1), SHARDED, mesh)
    step = step.lower(params, state, grads).compile()
    bad = {**host_tree(SHARDED, 2), "both": np.full((8, 16), np.nan, np.float32)}
    before = jax.tree.map(np.asarray, (params, state.inner_state))
    params, state = step(params, state, place(bad, SHARDED, mesh))
    after = jax.tree.map(np.asarray, (params, state.inner_state))
    unchanged = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )
    reference = place(host_tree(SHARDED, 0), SHARDED, mesh)
    problems += sharding_problems(state, reference, mesh, eager=False)
    return {
        "problems": problems,
        "collectives": collective_results(step.as_text()),
        "skipped_bad_step": unchanged and int(state.notfinite_count) == 1,
    }


def detector_self_test(mesh: Any) -> dict[str, Any]:
    """The checks must notice a wrongly placed buffer, an empty state and a real collective."""
    params = place(host_tree(SHARDED, 0), SHARDED, mesh)
    replicated = NamedSharding(mesh, P())
    wrong = momentum_jax.MomentumState(
        count=jnp.zeros([], jnp.int32),
        velocity=jax.tree.map(lambda p: jax.device_put(jnp.zeros_like(p), replicated), params),
    )
    gather = jax.jit(lambda x: x, out_shardings=replicated)
    return {
        "wrong_velocity_problems": len(sharding_problems(wrong, params, mesh, eager=True)),
        "empty_state_problems": sharding_problems(
            optax.identity().init(params), params, mesh, eager=False
        ),
        "gather_collectives": collectives_in(gather.lower(params["both"]).compile().as_text()),
    }


def zero1(devices: np.ndarray) -> dict[str, Any]:
    """Replicated params, velocity sharded over the data axis (ZeRO stage 1).

    The recipe of docs/production.md, step for step.
    """
    mesh = make_mesh(devices, ("data",))
    replicated = NamedSharding(mesh, P())
    over_data = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    params = jax.device_put(
        {"w": rng.standard_normal((64, 32), np.float32), "b": np.zeros(32, np.float32)},
        replicated,
    )
    optimizer = momentum_jax.nesterov(0.05, 0.9)
    state_sharding = zero1_specs(optimizer, params, mesh, "data")
    opt_state = jax.jit(optimizer.init, out_shardings=state_sharding)(params)
    placed = optimizer.init(params)
    placed = placed._replace(velocity=jax.device_put(placed.velocity, over_data))
    apply_grads = apply_step(optimizer)
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
    report = {
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
    # restore_state keeps the split velocity, so the step's in_shardings still fit.
    moved = momentum_jax.restore_state(opt_state, optimizer, params)
    report["restored_velocity_spec"] = list(moved.velocity["w"].sharding.spec)
    step(params, moved, grads)
    return report


def packed_on_a_mesh(devices: np.ndarray) -> dict[str, list[str]]:
    """The packed layout: large split params keep their sharded buffers, packs are replicated."""
    mesh = make_mesh(devices.reshape(1, 8))
    params = place(host_tree(PACKED_ON_MESH, 0, 0.1), PACKED_ON_MESH, mesh)
    tx = momentum_jax.momentum(0.1, 0.9, layout="packed")
    grads = jax.tree.map(lambda p: p * 0.5 + 1.0, params)

    def problems(state: Any) -> list[str]:
        return sharding_problems(state, params, mesh, eager=True, packed=True)

    cases = {
        "eager_init": problems(tx.init(params)),
        "jit_init": problems(jax.jit(tx.init)(params)),
    }
    update = jax.jit(tx.update).lower(grads, tx.init(params), params).compile()
    _, state = update(grads, jax.jit(tx.init)(params), params)
    cases["update"] = problems(state)
    # Replicated small params and a kernel split over "model": nothing to communicate.
    cases["no_collectives"] = collectives_in(update.as_text())
    # restore_state between the layouts keeps every buffer where init puts it.
    per_leaf = momentum_jax.restore_state(state, momentum_jax.momentum(0.1, 0.9), params)
    cases["restored_per_leaf"] = sharding_problems(per_leaf, params, mesh, eager=True)
    cases["restored_packed"] = problems(momentum_jax.restore_state(per_leaf, tx, params))
    if HAS_EXPLICIT_AXES:
        cases.update(packed_on_explicit_axes(devices))
    return cases


def packed_on_explicit_axes(devices: np.ndarray) -> dict[str, list[str]]:
    """Over explicit mesh axes a small but sharded param keeps its own, sharded buffer."""
    mesh = make_mesh(devices.reshape(2, 4), kind="explicit")
    spec: Spec = {
        "split": ((6, 16), jnp.float32, P(None, "model")),
        "bias": ((16,), jnp.float32, P()),
    }
    found: dict[str, list[str]] = {}
    with jax.set_mesh(mesh):
        params = place(host_tree(spec, 1), spec, mesh)
        tx = momentum_jax.momentum(0.1, 0.9, layout="packed")
        for phase, state in (("eager", tx.init(params)), ("jit", jax.jit(tx.init)(params))):
            wrong = []
            rest, packs = state.inner.velocity
            if rest["split"] is None:
                wrong.append("the sharded 6x16 param was packed")
            elif rest["split"].sharding.spec != params["split"].sharding.spec:
                wrong.append(f"split buffer {rest['split'].sharding} vs {params['split'].sharding}")
            if rest["bias"] is not None or packs["float32"].shape != (16,):
                wrong.append("the replicated bias was not packed")
            found[f"explicit_{phase}_init"] = wrong
        grads = jax.tree.map(lambda p: p + 1.0, params)
        updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
        found["explicit_update"] = (
            []
            if updates["split"].sharding.spec == params["split"].sharding.spec
            else [f"split update {updates['split'].sharding}"]
        )
    # Read back elsewhere without a target, with host params (which would all be
    # packed): which arrays were packed is read from the state itself.
    host = jax.tree.map(np.asarray, params)
    wrong = []
    try:
        moved = momentum_jax.restore_state(plain(state), tx, host)
        for name in params:
            if not np.array_equal(moved.velocity[name], np.asarray(state.velocity[name])):
                wrong.append(f"the {name} buffer changed")
    except ValueError as error:
        wrong.append(str(error))
    found["explicit_checkpoint_on_host"] = wrong
    # int8 buffers whose blocks a split would cut: 192 columns per device for blocks of 256,
    # or a conv kernel's blocks (256 elements from its input channels on) split along a
    # later axis. Refused.
    found["explicit_int8_cut_blocks"] = []
    cuts = [
        (
            (8, 768),
            P(None, "model"),
            "192 indices of axis 1 per device, which cuts its blocks "
            "of 256 consecutive elements from axis 1 on",
        ),
        (
            (64, 64, 4, 4),
            P(None, None, "model"),
            "1 indices of axis 2 per device, which cuts "
            "its blocks of 256 consecutive elements from axis 1 on",
        ),
    ]
    for shape, spec, why in cuts:
        split = {"w": (shape, jnp.float32, spec)}
        with jax.set_mesh(mesh):
            params = place(host_tree(split, 2), split, mesh)
            tx = momentum_jax.momentum(0.1, 0.9, accumulator_dtype=jnp.int8)
            try:
                tx.init(params)
                found["explicit_int8_cut_blocks"].append(f"{shape}: built with cut blocks")
            except ValueError as error:
                if why not in str(error):
                    found["explicit_int8_cut_blocks"].append(str(error))
            # A state placed on that split by hand, not by init: update refuses it too.
            whole = {"w": (shape, jnp.float32, P())}
            state = tx.init(place(host_tree(whole, 2), whole, mesh))
            cut = NamedSharding(mesh, spec)
            state = jax.tree.map(
                lambda x, cut=cut, shape=shape: jax.device_put(x, cut) if x.shape == shape else x,
                state,
            )
            try:
                tx.update(params, state, params)
                found["explicit_int8_cut_blocks"].append(f"{shape}: updated with cut blocks")
            except ValueError as error:
                if why not in str(error):
                    found["explicit_int8_cut_blocks"].append(str(error))
    return found


def sharding(args: list[str]) -> dict[str, Any]:
    devices = np.array(jax.devices())
    report: dict[str, Any] = {"devices": len(devices), "cases": {}}
    if len(devices) != 8:
        return report
    only = set(args)
    for kind in MESH_KINDS:
        mesh = make_mesh(devices.reshape(2, 4), kind=kind)
        for row in SHARDING_ROWS:
            if only and row.id not in only:
                continue
            if kind == "explicit":  # sharding is part of the type; jit needs the mesh set
                with jax.set_mesh(mesh):
                    report["cases"][f"{kind}/{row.id}"] = check_row(row, mesh)
            else:
                report["cases"][f"{kind}/{row.id}"] = check_row(row, mesh)
    # One 8-way axis: the guard's flag all-reduces then span one device group.
    # On a 2x4 mesh they span overlapping groups (rows and columns), which
    # XLA's simulated CPU devices can deadlock on when the host is busy.
    report["guarded"] = guarded(make_mesh(devices.reshape(1, 8)))
    report["detector"] = detector_self_test(make_mesh(devices.reshape(2, 4)))
    report["zero1"] = zero1(devices)
    report["packed"] = packed_on_a_mesh(devices)
    report["orbax_recipe"] = orbax_recipe(make_mesh(devices.reshape(2, 4)))
    return report


def orbax_recipe(mesh: Any) -> dict[str, Any]:
    """docs/production.md's orbax recipe on its sharded params: restored, then a jitted step
    without in_shardings (the counters must be where the params are)."""
    import tempfile

    import orbax.checkpoint as ocp

    params = {
        "kernel": jax.device_put(jnp.ones((16, 8)), NamedSharding(mesh, P("data", "model"))),
        "bias": jax.device_put(jnp.ones(8), NamedSharding(mesh, P())),
    }
    optimizer = momentum_jax.nesterov(0.1, momentum=0.9)
    step = jax.jit(apply_step(optimizer), donate_argnums=(0, 1))
    grads = jax.tree.map(lambda p: p * 0.5, params)
    params, opt_state = step(params, optimizer.init(params), grads)
    saved = jax.tree.map(np.asarray, opt_state)
    params_like = jax.tree.map(jnp.zeros_like, params)
    target = {"params": params_like, "opt_state": jax.jit(optimizer.init)(params_like)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with tempfile.TemporaryDirectory() as folder, ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(folder) / "step_1", {"params": params, "opt_state": opt_state})
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(Path(folder) / "step_1", abstract)
    same = jax.tree.map(np.array_equal, saved, jax.tree.map(np.asarray, restored["opt_state"]))
    problems = sharding_problems(restored["opt_state"], params, mesh, eager=False)
    step(restored["params"], restored["opt_state"], grads)  # raises if placed apart
    return {"bit_identical": all(jax.tree.leaves(same)), "problems": problems}


# --- checkpoints: save, then resume in a new process ----------------------------------

TOTAL = 10
SPLIT = 4
CHECKPOINT_FORMATS = ("orbax", "pickle", "npz")

_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((32, 4)).astype(np.float32)
_Y = (_X @ _RNG.standard_normal((4, 3)) + 0.1 * _RNG.standard_normal((32, 3))).astype(np.float32)


# bfloat16 params for one row: npz loses the bfloat16 dtype.
BFLOAT16_PARAMS = ("momentum_schedules",)


def file_name(case: str) -> str:
    """``case`` as a file name (orbax reads brackets in a path as a pattern)."""
    return re.sub(r"[^\w-]+", "_", case)


def checkpoint_params(case: str) -> dict[str, jax.Array]:
    dtype = jnp.bfloat16 if case in BFLOAT16_PARAMS else jnp.float32
    return {"w": jnp.asarray(np.full((4, 3), 0.1), dtype), "b": jnp.asarray(np.zeros(3), dtype)}


def _checkpoint_loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    pred = x @ params["w"].astype(jnp.float32) + params["b"].astype(jnp.float32)
    return jnp.mean((pred - y) ** 2)


def _checkpoint_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
    update = apply_step(tx)

    @jax.jit
    def step(params: Any, state: Any, k: jax.Array) -> Any:
        # A different minibatch each step, so gradients change along the run.
        start = (k * 8) % 32
        x = jax.lax.dynamic_slice_in_dim(jnp.asarray(_X), start, 8)
        y = jax.lax.dynamic_slice_in_dim(jnp.asarray(_Y), start, 8)
        grads = jax.grad(_checkpoint_loss)(params, x, y)
        return update(params, state, jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params))

    return step


def _train(tx: Any, params: Any, state: Any, first: int, last: int) -> tuple[Any, Any, list[Any]]:
    step = _checkpoint_step(tx)
    trajectory = []
    for k in range(first, last):
        params, state = step(params, state, jnp.asarray(k, jnp.int32))
        trajectory.append(jax.tree.map(np.asarray, params))
    return params, state, trajectory


def _write_run(path: Path, trajectory: list[Any], first: int, state: Any) -> None:
    """Params after every step (``step<k>/<leaf>``) and the final state's leaves (``state/<i>``)."""
    arrays: dict[str, np.ndarray] = {}
    for offset, params in enumerate(trajectory):
        for key, value in params.items():
            # Stored as raw bits: npz cannot hold bfloat16.
            arrays[f"step{first + offset + 1}/{key}"] = np.asarray(value).reshape(-1).view(np.uint8)
    for i, leaf in enumerate(jax.tree.leaves(state)):
        arrays[f"state/{i}"] = np.asarray(leaf).reshape(-1).view(np.uint8)
    np.savez(path, **arrays)


def signature(tree: Any) -> Any:
    return str(jax.tree.structure(tree)), [
        (tuple(np.shape(x)), str(jnp.result_type(x))) for x in jax.tree.leaves(tree)
    ]


# The three checkpoint formats (the recipes of docs/production.md).


def save_orbax(directory: Path, params: Any, state: Any) -> None:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory.absolute(), {"params": params, "opt_state": state})


def restore_orbax(directory: Path, params_like: Any, state_like: Any) -> tuple[Any, Any]:
    import orbax.checkpoint as ocp

    # The target gives the tree structure (NamedTuples, chain tuples), shapes,
    # dtypes and shardings; orbax fills in the saved values.
    target = {"params": params_like, "opt_state": state_like}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory.absolute(), abstract)
    return restored["params"], restored["opt_state"]


def save_pickle(path: Path, params: Any, state: Any) -> None:
    with path.open("wb") as file:
        pickle.dump(jax.device_get((params, state)), file)


def restore_pickle(path: Path) -> tuple[Any, Any]:
    with path.open("rb") as file:
        params, state = pickle.load(file)
    return params, state


def save_npz(path: Path, params: Any, state: Any) -> None:
    leaves = jax.tree.leaves((params, state))
    np.savez(path, *[np.asarray(leaf) for leaf in leaves])


def restore_npz(path: Path, params_like: Any, state_like: Any) -> tuple[Any, Any]:
    # The tree structure is not in the file: rebuild it from a fresh init. The
    # dtypes come from there too (npz stores bfloat16 as raw 2-byte voids).
    like_leaves, treedef = jax.tree.flatten((params_like, state_like))
    with np.load(path) as data:
        stored = [data[f"arr_{i}"] for i in range(len(data.files))]
    leaves = [
        jnp.asarray(value.view(like.dtype)) for value, like in zip(stored, like_leaves, strict=True)
    ]
    params, state = jax.tree.unflatten(treedef, leaves)
    return params, state


def checkpoint(args: list[str]) -> dict[str, Any]:
    """``save DIR FORMATS`` or ``resume DIR FORMATS`` (comma-separated formats).

    ``save`` trains every row of CHECKPOINT_ROWS for ``TOTAL`` steps, saving
    params and state after ``SPLIT`` steps in each format, and writes the
    uninterrupted run to ``DIR/<row>-uninterrupted.npz``. ``resume`` restores
    each checkpoint, trains the remaining steps and writes ``DIR/<row>-<format>.npz``;
    for orbax also once with the step counter reset to zero
    (``DIR/<row>-orbax-count-reset.npz``), a run that must differ.
    """
    command, directory, formats = args[0], Path(args[1]), args[2].split(",")
    report: dict[str, Any] = {"signature_matches": {}, "restored_counters": {}}
    for row in CHECKPOINT_ROWS:
        case, tx = row.id, row.build()
        params_like = checkpoint_params(case)
        name = file_name(case)
        state_like = tx.init(params_like)
        if command == "save":
            params, state, first_part = _train(tx, params_like, state_like, 0, SPLIT)
            if "orbax" in formats:
                save_orbax(directory / f"{name}-orbax", params, state)
            if "pickle" in formats:
                save_pickle(directory / f"{name}.pkl", params, state)
            if "npz" in formats:
                save_npz(directory / f"{name}-leaves.npz", params, state)
            _, state, second_part = _train(tx, params, state, SPLIT, TOTAL)
            _write_run(directory / f"{name}-uninterrupted.npz", first_part + second_part, 0, state)
            continue
        restored: dict[str, tuple[Any, Any]] = {}
        if "orbax" in formats:
            restored["orbax"] = restore_orbax(directory / f"{name}-orbax", params_like, state_like)
        if "pickle" in formats:
            restored["pickle"] = restore_pickle(directory / f"{name}.pkl")
        if "npz" in formats:
            restored["npz"] = restore_npz(directory / f"{name}-leaves.npz", params_like, state_like)
        for fmt, (params, state) in restored.items():
            report["signature_matches"][f"{case}-{fmt}"] = signature((params, state)) == signature(
                (params_like, state_like)
            )
            _, final_state, trajectory = _train(tx, params, state, SPLIT, TOTAL)
            _write_run(directory / f"{name}-{fmt}.npz", trajectory, SPLIT, final_state)
        if "orbax" in restored:
            params, state = restored["orbax"]
            counters = [int(x) for x in jax.tree.leaves(state) if jnp.ndim(x) == 0]
            report["restored_counters"][case] = counters
            # (optax.tree_utils.tree_set cannot set the count of a PackedState.)
            reset = jax.tree_util.tree_map_with_path(
                lambda path, x: (
                    jnp.zeros_like(x) if getattr(path[-1], "name", "") == "count" else x
                ),
                state,
            )
            _, final_state, trajectory = _train(tx, params, reset, SPLIT, TOTAL)
            _write_run(directory / f"{name}-orbax-count-reset.npz", trajectory, SPLIT, final_state)
    return report


# --- several processes, one mesh ------------------------------------------------------
#
# ``python tests/_worker.py multihost SPEC`` runs one process; ``SPEC`` is a JSON
# object (inline, or ``@path`` to a file holding it)::
#
#     {"task": "run" | "resume" | "die", "name": "run",
#      "process_id": 0, "num_processes": 2, "port": 12345,
#      "out": "DIR",           # reports (<name>-p<id>.json) and marker files
#      "checkpoints": "DIR",   # run (then preempted) and resume
#      "victim": 1}            # die
#
# With ``num_processes`` 1 it runs alone (the single-process reference, on 8
# devices); otherwise it joins the others through ``jax.distributed.initialize``
# on 127.0.0.1. Every process sees the same 2x4 ``('data', 'model')`` mesh of 8
# devices, each process holding 4: ``'data'`` spans the processes, ``'model'``
# stays within one. The params are split across the processes (``w1``), within
# each (``w2``), both ways (``w3``), and replicated (the small ones).
#
# Every row of MESH_ROWS runs in both layouts (``CASES``), all of them in each
# compiled program (one compilation instead of twenty).
#
# * ``run``: init eagerly and under ``jax.jit``, recording every state leaf not
#   laid out as documented; ``STEPS`` donated steps of one compiled update on a
#   fixed gradient sequence (the optimizer alone: any difference between
#   topologies would be the optimizer's), digests of every shard; a training
#   run of ``STEPS`` steps on a data-parallel batch through the same update
#   (final params in ``<name>.npz``); ZeRO-1 with a replicated and a split
#   velocity. With ``checkpoints``, the fixed run again with an
#   ``ocp.CheckpointManager`` saving every ``SAVE_EVERY`` steps: both processes
#   start the checkpoint of ``STALL_AT``, process 1 freezes itself (SIGSTOP) and
#   process 0 goes on into the next step, writing the markers ``frozen-p1`` and
#   ``in-next-step-p0``; the test kills both there. The report is written before.
# * ``resume``: new processes restore the latest complete checkpoint into an
#   abstract target (``jax.eval_shape`` plus the shardings of the compiled
#   ``jax.jit(init)``) and finish the fixed run.
# * ``die``: a sum across the processes; then both write ``ready-p<id>``,
#   process ``victim`` sleeps (the test kills or freezes it) and the other waits
#   for it in the next sum. If that raises, the survivor writes the error in its
#   report and exits with status 3.

STEPS = 20
SAVE_EVERY = 5
STALL_AT = 15
HEARTBEAT_TIMEOUT = 10  # seconds; JAX's default is 100
BATCH = 16  # global batch, split over 'data': 8 rows per process
IN, HIDDEN, OUT = 64, 1032, 1032
# The large params have more than 2**16 elements, so the packed layout keeps
# them apart (and sharded); the small ones are replicated and packed.
MULTIHOST: Spec = {
    "w1": ((IN, HIDDEN), jnp.float32, P("data", None)),  # across the processes
    "b1": ((HIDDEN,), jnp.float32, P()),
    "w2": ((HIDDEN, IN), jnp.float32, P(None, "model")),  # within each process
    "b2": ((IN,), jnp.float32, P()),
    "gain": ((IN,), jnp.bfloat16, P()),
    "w3": ((IN, OUT), jnp.float32, P("data", "model")),  # both
    "b3": ((OUT,), jnp.float32, P()),
    "scale": ((), jnp.float32, P()),
}
LAYOUTS = ("per_leaf", "packed")
CASES = [f"{row.id}/{layout}" for row in MESH_ROWS for layout in LAYOUTS]
_MESH_ROWS = {row.id: row for row in MESH_ROWS}


def build(case: str) -> optax.GradientTransformation:
    name, layout = case.split("/")
    return _MESH_ROWS[name].build(layout=layout)


def initialize(spec: dict[str, Any]) -> dict[str, Any]:
    """``jax.distributed.initialize`` on 127.0.0.1, with what each JAX version needs.

    Returns the keyword arguments used (for the report).
    """
    # CPU collectives across processes: up to JAX 0.5.0 the default is 'none'
    # (no collectives across processes); from 0.5.1 it is gloo (read as None
    # in some releases, which then picks gloo).
    if jax.config.values.get("jax_cpu_collectives_implementation") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address = f"127.0.0.1:{spec['port']}"
    kwargs: dict[str, Any] = {
        "coordinator_address": address,
        # Without it the coordinator listens on every interface ([::]:port).
        "coordinator_bind_address": address,
        "num_processes": spec["num_processes"],
        "process_id": spec["process_id"],
        "initialization_timeout": 60,
    }
    accepted = inspect.signature(jax.distributed.initialize).parameters
    # A process that stops sending heartbeats fails the others after this
    # (the default is 100 s; the argument exists from JAX 0.7).
    if "heartbeat_timeout_seconds" in accepted:
        kwargs["heartbeat_timeout_seconds"] = HEARTBEAT_TIMEOUT
    # How long the exit waits for the other processes (from JAX 0.8.1; 300 s).
    if "shutdown_timeout_seconds" in accepted:
        kwargs["shutdown_timeout_seconds"] = 30
    jax.distributed.initialize(**kwargs)
    return {key: value for key, value in kwargs.items() if key.endswith("seconds")} | {
        "initialization_timeout": 60,
        "cpu_collectives": jax.config.values.get("jax_cpu_collectives_implementation"),
    }


def initial_params(mesh: Any) -> dict[str, jax.Array]:
    host = host_tree(MULTIHOST, 0, 0.1)
    host["gain"] = np.ones(IN, jnp.bfloat16)
    host["scale"] = np.asarray(1.0, np.float32)
    return place(host, MULTIHOST, mesh)


_DATA = np.random.default_rng(42)
_DATA_X = _DATA.standard_normal((BATCH * STEPS, IN)).astype(np.float32)
_TEACHER = _DATA.standard_normal((IN, OUT)).astype(np.float32) / np.sqrt(IN)
_DATA_Y = np.tanh(_DATA_X @ _TEACHER).astype(np.float32)


def batch(k: int, mesh: Any) -> tuple[jax.Array, jax.Array]:
    """Minibatch ``k`` split over 'data': each process passes only its own rows."""
    rows = slice(k * BATCH, (k + 1) * BATCH)
    sharding = NamedSharding(mesh, P("data"))
    count, index = jax.process_count(), jax.process_index()
    local = slice(index * BATCH // count, (index + 1) * BATCH // count)
    x, y = _DATA_X[rows][local], _DATA_Y[rows][local]
    return (
        jax.make_array_from_process_local_data(sharding, x, (BATCH, IN)),
        jax.make_array_from_process_local_data(sharding, y, (BATCH, OUT)),
    )


def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    h = jnp.tanh(h @ params["w2"] + params["b2"]) * params["gain"].astype(jnp.float32)
    out = params["scale"] * (h @ params["w3"]) + params["b3"]
    return jnp.mean((out - y) ** 2)


# A tree per case ({case: params}, {case: state}); one jitted program steps all
# of them, so a run compiles once instead of once per case (compilation is
# most of the cost of this test on a CPU).


def optimizers() -> dict[str, optax.GradientTransformation]:
    return {case: build(case) for case in CASES}


def all_params(mesh: Any) -> dict[str, Any]:
    return {case: initial_params(mesh) for case in CASES}


def init_all(txs: dict[str, optax.GradientTransformation], params: dict[str, Any]) -> Any:
    return {case: tx.init(params[case]) for case, tx in txs.items()}


def update_program(txs: dict[str, optax.GradientTransformation], *example: Any) -> Any:
    """Every case's optimizer update in one compiled program: (params, states, grads).

    Both runs use it: the fixed run feeds it a fixed sequence of gradients,
    the training run the gradients of a data-parallel batch. From JAX 0.10 on
    no layout is pinned: the outputs are laid out as XLA propagates the
    inputs' layouts through the update, and a compiled program refuses inputs
    laid out otherwise, so a step whose state lost its layout fails the next
    one. The partitioner of JAX 0.4.35 lays out some updated params split on
    both mesh axes across processes (a valid layout, but not their own); there
    the outputs are pinned to the inputs' layouts.
    """
    steps = {case: apply_step(tx) for case, tx in txs.items()}

    def step(params: Any, states: Any, grads: Any) -> Any:
        out = {case: steps[case](params[case], states[case], grads[case]) for case in steps}
        return {case: p for case, (p, _) in out.items()}, {case: s for case, (_, s) in out.items()}

    options: dict[str, Any] = {}
    if tuple(int(part) for part in jax.__version__.split(".")[:2]) < (0, 10):
        options["out_shardings"] = jax.tree.map(lambda x: x.sharding, tuple(example[:2]))
    return jax.jit(step, donate_argnums=(0, 1), **options).lower(*example).compile()


@jax.jit
def fixed_gradients(a: Any, b: Any, k: jax.Array) -> Any:
    """The step-k gradient of the fixed run: a mix of two random trees that changes each step."""
    kf = k.astype(jnp.float32)
    c1, c2 = jnp.cos(0.7 * kf), jnp.sin(0.3 * kf + 1.0)
    return jax.tree.map(lambda x, y: c1.astype(x.dtype) * x + c2.astype(y.dtype) * y, a, b)


def per_case(grads: Any) -> dict[str, Any]:
    return dict.fromkeys(CASES, grads)


def gradient_program(param_shardings: Any, mesh: Any) -> Callable[..., Any]:
    """The loss and gradient of every case on a data-parallel batch, in one program.

    One vmapped computation for all cases, so a step has a few dozen
    collectives instead of hundreds (each costs milliseconds over gloo). The
    gradients come out laid out like their params, as the update expects.
    """

    def gradients(params: Any, x: jax.Array, y: jax.Array) -> Any:
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[params[c] for c in CASES])
        loss, grad = jax.vmap(jax.value_and_grad(loss_fn), in_axes=(0, None, None))(stacked, x, y)
        grads = {case: jax.tree.map(lambda g, i=i: g[i], grad) for i, case in enumerate(CASES)}
        return grads, {case: loss[i] for i, case in enumerate(CASES)}

    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P("data"))
    return jax.jit(
        gradients,
        in_shardings=(param_shardings, rows, rows),
        out_shardings=(param_shardings, replicated),
    )


def _gradient_trees(mesh: Any) -> tuple[Any, Any]:
    return place(host_tree(MULTIHOST, 1), MULTIHOST, mesh), place(
        host_tree(MULTIHOST, 2), MULTIHOST, mesh
    )


def where_the_devices_are(mesh: Any) -> list[list[int]]:
    """The process of each mesh device, row by row ('data' down, 'model' across)."""
    return [[int(d.process_index) for d in row] for row in mesh.devices]


def _layout_problems(states: Any, params: Any, mesh: Any, *, eager: bool) -> dict[str, list[str]]:
    """Each case's optimizer state against the initial params' layout; then the params'."""
    reference = initial_params(mesh)
    return {
        case: sharding_problems(
            states[case], reference, mesh, eager=eager, packed=case.endswith("/packed")
        )
        + [f"params: {p}" for p in sharding_problems(params[case], reference, mesh, eager=eager)]
        for case in CASES
    }


def _per_case(tree: Any, states: Any) -> dict[str, dict[str, str]]:
    return {case: digests({"params": tree[case], "opt_state": states[case]}) for case in CASES}


def _clock(report: dict[str, Any], what: str, since: float) -> float:
    now = time.monotonic()
    report.setdefault("phase_seconds", {})[what] = round(now - since, 2)
    return now


def run(spec: dict[str, Any], mesh: Any, report: dict[str, Any]) -> None:
    txs = optimizers()
    clock = time.monotonic()
    params = all_params(mesh)
    report["eager_init"] = _layout_problems(init_all(txs, params), params, mesh, eager=True)
    clock = _clock(report, "eager_init", clock)
    init = jax.jit(lambda p: init_all(txs, p))
    states = init(params)
    report["jit_init"] = _layout_problems(states, params, mesh, eager=False)
    # The check can fail: a replicated velocity is wrong for the three split
    # params, and an empty state shows nothing to check.
    first = CASES[0]
    wrong = jax.device_put(states[first], NamedSharding(mesh, P()))
    report["detector"] = sharding_problems(wrong, params[first], mesh, eager=False)
    report["detector_empty"] = sharding_problems(
        optax.identity().init(params[first]), params[first], mesh, eager=False
    )
    clock = _clock(report, "jit_init", clock)

    # The optimizers alone, on a fixed sequence of gradients.
    a, b = _gradient_trees(mesh)
    update = update_program(txs, params, states, per_case(fixed_gradients(a, b, jnp.int32(0))))
    report["collectives"] = collectives_in(update.as_text())
    for k in range(STEPS):
        params, states = update(params, states, per_case(fixed_gradients(a, b, jnp.int32(k))))
        if k + 1 == STALL_AT - SAVE_EVERY:  # the last checkpoint before the kill
            report["fixed_at_checkpoint"] = _per_case(params, states)
    report["after_fixed"] = _layout_problems(states, params, mesh, eager=False)
    report["fixed"] = _per_case(params, states)
    report["initial"] = digests(initial_params(mesh))
    clock = _clock(report, "fixed_run", clock)

    # Training: a data-parallel batch, the gradients all-reduced across the
    # processes, the same update program.
    params = all_params(mesh)
    state_shardings = jax.tree.map(lambda x: x.sharding, states)
    # An eager init, placed as the compiled update expects it: its step
    # counters are uncommitted single-device scalars.
    states = jax.device_put(init_all(txs, params), state_shardings)
    gradients = gradient_program(jax.tree.map(lambda x: x.sharding, params), mesh)
    losses = []
    for k in range(STEPS):
        grads, loss = gradients(params, *batch(k, mesh))
        params, states = update(params, states, grads)
        losses.append(loss)  # read at the end: reading each step would stall the pipeline
    report["losses"] = {case: [float(to_host(loss[case])) for loss in losses] for case in CASES}
    report["after_training"] = _layout_problems(states, params, mesh, eager=False)
    finals = {
        f"{case}/{name}": to_host(value).astype(np.float32)
        for case in CASES
        for name, value in params[case].items()
    }
    if jax.process_index() == 0:
        np.savez(Path(spec["out"]) / f"{spec['name']}.npz", **finals)
    clock = _clock(report, "training_run", clock)
    zero1_across_processes(mesh, report)
    clock = _clock(report, "zero1", clock)
    if spec.get("checkpoints"):
        _preempted(spec, report, update, init, (a, b), mesh)


def zero1_across_processes(mesh: Any, report: dict[str, Any]) -> None:
    """ZeRO stage 1 across processes: replicated params, each buffer split over all 8 devices.

    The same 20 steps with the velocity replicated and split: the numbers must
    not change, only where they live (and an all-gather joins the updates).
    """
    tx = momentum_jax.nesterov(0.05, 0.9)
    replicated = NamedSharding(mesh, P())
    rng = np.random.default_rng(7)
    shapes = {"w": (64, 32), "b": (32,), "odd": (5,)}
    host = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}
    a, b = (
        {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in host.items()} for _ in "ab"
    )
    spec: Spec = {k: (shape, jnp.float32, P()) for k, shape in shapes.items()}
    update = apply_step(tx)

    def step(params: Any, state: Any, a: Any, b: Any, k: jax.Array) -> Any:
        kf = k.astype(jnp.float32)
        grads = jax.tree.map(lambda x, y: jnp.cos(0.7 * kf) * x + jnp.sin(0.3 * kf) * y, a, b)
        return update(params, state, grads)

    out: dict[str, Any] = {}
    # The first axis over both processes' devices, where it divides evenly.
    split = zero1_specs(tx, place(host, spec, mesh), mesh, AXES)
    for label, state_sharding in (
        ("replicated", jax.tree.map(lambda _: replicated, split)),
        ("zero1", split),
    ):
        params = place(host, spec, mesh)
        state = jax.jit(tx.init, out_shardings=state_sharding)(params)
        jitted = jax.jit(
            step,
            in_shardings=(replicated, state_sharding, replicated, replicated, replicated),
            out_shardings=(replicated, state_sharding),
            donate_argnums=(0, 1),
        )
        placed = (place(a, spec, mesh), place(b, spec, mesh))
        compiled = jitted.lower(params, state, *placed, jnp.asarray(0, jnp.int32)).compile()
        for k in range(STEPS):
            params, state = compiled(params, state, *placed, jnp.asarray(k, jnp.int32))
        velocity = state.velocity
        final = {"params": params, "velocity": velocity}
        out[label] = {
            "digests": digests(final),
            "whole": {  # the whole arrays (gathered), to compare split with replicated
                jax.tree_util.keystr(path): hashlib.sha256(to_host(leaf).tobytes()).hexdigest()
                for path, leaf in jax.tree_util.tree_leaves_with_path(final)
            },
            "velocity_specs": {k: str(v.sharding.spec) for k, v in velocity.items()},
            "velocity_w_bytes_per_device": int(velocity["w"].addressable_shards[0].data.nbytes),
            "velocity_w_processes": sorted(
                {int(d.process_index) for d in velocity["w"].sharding.device_set}
            ),
            "collectives": collectives_in(compiled.as_text()),
        }
    report["zero1"] = out


def _manager(directory: str) -> Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(save_interval_steps=SAVE_EVERY)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _marker(spec: dict[str, Any], name: str) -> None:
    path = Path(spec["out"]) / f"{name}-p{jax.process_index()}"
    path.write_text(f"{time.time()}\n")


def _checkpoint_tree(params: Any, states: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for case in CASES:
        name, layout = case.split("/")
        tree.setdefault(name, {})[layout] = {"params": params[case], "opt_state": states[case]}
    return tree


def _from_checkpoint_tree(tree: dict[str, Any]) -> tuple[Any, Any]:
    params, states = {}, {}
    for case in CASES:
        name, layout = case.split("/")
        params[case] = tree[name][layout]["params"]
        states[case] = tree[name][layout]["opt_state"]
    return params, states


def _preempted(
    spec: dict[str, Any],
    report: dict[str, Any],
    update: Any,
    init: Any,
    gradients: tuple[Any, Any],
    mesh: Any,
) -> None:
    """The fixed run again, checkpointed every SAVE_EVERY steps; killed at STALL_AT."""
    import orbax.checkpoint as ocp

    params = all_params(mesh)
    states = init(params)
    manager = _manager(spec["checkpoints"])
    for k in range(STEPS):
        params, states = update(params, states, per_case(fixed_gradients(*gradients, jnp.int32(k))))
        done = k + 1
        if done % SAVE_EVERY:
            continue
        tree = _checkpoint_tree(params, states)
        if done == STALL_AT:
            _write(spec, report)  # all there is: the test kills this process
            # Both start the checkpoint of STALL_AT (orbax writes it in the
            # background); process 1 freezes at once, so it never completes:
            # a machine lost in the middle of a checkpoint.
            manager.save(done, args=ocp.args.StandardSave(tree))
            if jax.process_index() == 1:
                _marker(spec, "frozen")
                os.kill(os.getpid(), signal.SIGSTOP)
            # Process 0 goes on into the next step, and is killed there.
            grads = per_case(fixed_gradients(*gradients, jnp.int32(done)))
            params, states = update(params, states, grads)
            _marker(spec, "in-next-step")
            time.sleep(3600)
        manager.save(done, args=ocp.args.StandardSave(tree))
        manager.wait_until_finished()
        _marker(spec, f"saved-{done}")
    raise AssertionError(f"the run should have been killed at step {STALL_AT}")


def abstract_target(txs: Any, mesh: Any) -> dict[str, Any]:
    """What restoring needs, without allocating: shapes, dtypes and shardings.

    ``jax.eval_shape`` gives the states' structure, shapes and dtypes; the
    compiled ``jax.jit(init)`` gives their shardings (each buffer its param's).
    """
    one = {
        name: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, where))
        for name, (shape, dtype, where) in MULTIHOST.items()
    }
    params = {case: one for case in CASES}

    def init(p: Any) -> Any:
        return init_all(txs, p)

    shapes = jax.eval_shape(init, params)
    state_shardings = jax.jit(init).lower(params).compile().output_shardings
    states = jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes,
        state_shardings,
    )
    return _checkpoint_tree(params, states)


def resume(spec: dict[str, Any], mesh: Any, report: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    directory = Path(spec["checkpoints"])
    report["listing"] = sorted(p.name for p in directory.iterdir())
    clock = time.monotonic()
    txs = optimizers()
    manager = _manager(spec["checkpoints"])
    first = manager.latest_step()
    report["all_steps"] = [int(s) for s in manager.all_steps()]
    report["restored_step"] = first
    restored = manager.restore(first, args=ocp.args.StandardRestore(abstract_target(txs, mesh)))
    params, states = _from_checkpoint_tree(restored)
    report["restored"] = _layout_problems(states, params, mesh, eager=False)
    report["restored_digests"] = _per_case(params, states)
    report["counts"] = {
        case: [
            int(to_host(x))
            for x in jax.tree.leaves(states[case])
            if x.ndim == 0 and jnp.issubdtype(x.dtype, jnp.integer)
        ]
        for case in CASES
    }
    clock = _clock(report, "restore", clock)
    a, b = _gradient_trees(mesh)
    update = update_program(txs, params, states, per_case(fixed_gradients(a, b, jnp.int32(0))))
    for k in range(first, STEPS):
        params, states = update(params, states, per_case(fixed_gradients(a, b, jnp.int32(k))))
    report["fixed"] = _per_case(params, states)
    manager.close()
    _clock(report, "fixed_run", clock)


def die(spec: dict[str, Any], mesh: Any, report: dict[str, Any]) -> None:
    x = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("data")), np.ones((4, 3), np.float32), (8, 3)
    )
    total = jax.jit(jnp.sum)
    report["first_sum"] = float(to_host(total(x)))
    _marker(spec, "ready")
    if jax.process_index() == spec["victim"]:
        time.sleep(3600)  # killed here
    start = time.monotonic()
    try:
        report["second_sum"] = float(to_host(total(x + 1.0)))
    except Exception as error:  # what JAX raises when a peer is gone
        report["error"] = f"{type(error).__name__}: {error}"[:2000]
    report["seconds_in_collective"] = time.monotonic() - start
    _write(spec, report)
    # Leave at once: the exit's shutdown barrier would wait for the dead
    # process until the heartbeat timeout.
    os._exit(3)


_CAUGHT: dict[str, list[Any]] = {"warnings": []}


def _warnings() -> list[str]:
    return [f"{w.category.__name__}: {w.message}" for w in _CAUGHT["warnings"]]


def _write(spec: dict[str, Any], report: dict[str, Any]) -> None:
    report["warnings"] = _warnings()
    path = Path(spec["out"]) / f"{spec['name']}-p{spec['process_id']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(path)


def _exit_with_the_parent() -> None:
    """Leave when the process that started this one is gone (a test run killed outright)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def multihost(args: list[str]) -> None:
    """One process of a multi-process run; its report goes to ``<out>/<name>-p<id>.json``."""
    _exit_with_the_parent()
    argument = args[0]
    spec = json.loads(Path(argument[1:]).read_text() if argument.startswith("@") else argument)
    spec.setdefault("name", spec["task"])
    started = time.monotonic()
    setup: dict[str, Any] = {}
    if spec["num_processes"] > 1:
        setup = initialize(spec)
    mesh = make_mesh(np.array(jax.devices()).reshape(2, 4))
    report: dict[str, Any] = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "mesh_processes": where_the_devices_are(mesh),
        "setup": setup,
        "jax": jax.__version__,
    }
    {"run": run, "resume": resume, "die": die}[spec["task"]](spec, mesh, report)
    report["seconds"] = round(time.monotonic() - started, 2)
    _write(spec, report)


# --- the entry point -----------------------------------------------------------------

TASKS: dict[str, Callable[[list[str]], Any]] = {
    "sharding": sharding,
    "checkpoint": checkpoint,
    "multihost": multihost,
}


def main() -> None:
    task, args = sys.argv[1], sys.argv[2:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Deprecations raised by orbax's own code are orbax's to fix, not ours (orbax
        # 0.12.8 names jax.sharding.SingleDeviceSharding, which jax 0.12.1 deprecates).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"orbax\.")
        _CAUGHT["warnings"] = caught
        report = TASKS[task](args)
        if report is not None:  # the multihost task writes its own reports
            report["warnings"] = _warnings()
            print(json.dumps(report))


if __name__ == "__main__":
    main()
