"""One process of a multi-process run: the script behind tests/test_multihost.py.

``python tests/_multihost_worker.py SPEC`` runs one process; ``SPEC`` is a JSON
object (inline, or ``@path`` to a file holding it)::

    {"task": "run" | "resume" | "die", "name": "run",
     "process_id": 0, "num_processes": 2, "port": 12345,
     "out": "DIR",           # reports (<name>-p<id>.json) and marker files
     "checkpoints": "DIR",   # run (then preempted) and resume
     "victim": 1}            # die

With ``num_processes`` 1 it runs alone (the single-process reference, on 8
devices); otherwise it joins the others through ``jax.distributed.initialize``
on 127.0.0.1. Every process sees the same 2x4 ``('data', 'model')`` mesh of 8
devices, each process holding 4: ``'data'`` spans the processes, ``'model'``
stays within one. The params are split across the processes (``w1``), within
each (``w2``), both ways (``w3``), and replicated (the small ones).

Every public transform and preset runs in both layouts (``CASES``), all of
them in each compiled program (one compilation instead of twenty).

* ``run``: init eagerly and under ``jax.jit``, recording every state leaf not
  laid out as documented; ``STEPS`` donated steps of one compiled update on a
  fixed gradient sequence (the optimizer alone: any difference between
  topologies would be the optimizer's), digests of every shard; a training
  run of ``STEPS`` steps on a data-parallel batch through the same update
  (final params in ``<name>.npz``); ZeRO-1 with a replicated and a split
  velocity. With ``checkpoints``, the fixed run again with an
  ``ocp.CheckpointManager`` saving every ``SAVE_EVERY`` steps: both processes
  start the checkpoint of ``STALL_AT``, process 1 freezes itself (SIGSTOP) and
  process 0 goes on into the next step, writing the markers ``frozen-p1`` and
  ``in-next-step-p0``; the test kills both there. The report is written before.
* ``resume``: new processes restore the latest complete checkpoint into an
  abstract target (``jax.eval_shape`` plus the shardings of the compiled
  ``jax.jit(init)``) and finish the fixed run.
* ``die``: a sum across the processes; then both write ``ready-p<id>``,
  process ``victim`` sleeps (the test kills or freezes it) and the other waits
  for it in the next sum. If that raises, the survivor writes the error in its
  report and exits with status 3.

A report lists problems as strings; the assertions live in the test module.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
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

import momentum_jax
from momentum_jax import compat

STEPS = 20
SAVE_EVERY = 5
STALL_AT = 15
HEARTBEAT_TIMEOUT = 10  # seconds; JAX's default is 100
MESH_SHAPE = (2, 4)
AXES = ("data", "model")
BATCH = 16  # global batch, split over 'data': 8 rows per process
IN, HIDDEN, OUT = 64, 1032, 1032
# Every param, its shape, dtype and layout. The large ones have more than
# 2**16 elements, so the packed layout keeps them apart (and sharded); the
# small ones are replicated and packed.
PARAMS: dict[str, tuple[tuple[int, ...], Any, P]] = {
    "w1": ((IN, HIDDEN), jnp.float32, P("data", None)),  # across the processes
    "b1": ((HIDDEN,), jnp.float32, P()),
    "w2": ((HIDDEN, IN), jnp.float32, P(None, "model")),  # within each process
    "b2": ((IN,), jnp.float32, P()),
    "gain": ((IN,), jnp.bfloat16, P()),
    "w3": ((IN, OUT), jnp.float32, P("data", "model")),  # both
    "b3": ((OUT,), jnp.float32, P()),
    "scale": ((), jnp.float32, P()),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def _decay(count: Any) -> Any:
    return 0.05 / (1.0 + 0.1 * count)


def _rising(count: Any) -> Any:
    return jnp.minimum(0.5 + 0.05 * count, 0.95)


def _then_lr(block: optax.GradientTransformation) -> optax.GradientTransformation:
    return optax.chain(block, optax.scale_by_learning_rate(_decay))


# One row per public transform and preset; schedules move at every step, so a
# lost or reset step counter changes the run.
TRANSFORMS: dict[str, Callable[[str], optax.GradientTransformation]] = {
    "momentum": lambda layout: momentum_jax.momentum(_decay, 0.9, weight_decay=1e-3, layout=layout),
    "nesterov": lambda layout: momentum_jax.nesterov(_decay, _rising, layout=layout),
    "scale_by_momentum": lambda layout: _then_lr(
        momentum_jax.scale_by_momentum(0.9, dampening=0.1, layout=layout)
    ),
    "qhm": lambda layout: momentum_jax.qhm(_decay, 0.9, 0.7, layout=layout),
    "scale_by_qhm": lambda layout: _then_lr(momentum_jax.scale_by_qhm(0.9, 0.7, layout=layout)),
    "aggmo": lambda layout: momentum_jax.aggmo(_decay, (0.0, 0.9, 0.99), layout=layout),
    "scale_by_aggmo": lambda layout: _then_lr(
        momentum_jax.scale_by_aggmo((0.0, 0.9, 0.99), layout=layout)
    ),
    "torch_sgd": lambda layout: compat.torch_sgd(
        _decay, 0.9, dampening=0.1, weight_decay=1e-3, layout=layout
    ),
    "keras_sgd": lambda layout: compat.keras_sgd(
        _decay, 0.9, nesterov=True, weight_decay=1e-3, layout=layout
    ),
    "tf1_momentum": lambda layout: compat.tf1_momentum(
        _decay, 0.9, use_nesterov=True, layout=layout
    ),
}
LAYOUTS = ("per_leaf", "packed")
CASES = [f"{name}/{layout}" for name in TRANSFORMS for layout in LAYOUTS]


def build(case: str) -> optax.GradientTransformation:
    name, layout = case.split("/")
    return TRANSFORMS[name](layout)


# --- joining the other processes ----------------------------------------------


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


def make_mesh() -> jax.sharding.Mesh:
    devices = np.array(jax.devices()).reshape(MESH_SHAPE)
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None:
        return jax.sharding.Mesh(devices, AXES)
    return jax.sharding.Mesh(devices, AXES, axis_types=(axis_type.Auto,) * len(AXES))


# --- params, gradients and data, the same on every process ---------------------


def host_tree(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: (scale * rng.standard_normal(shape)).astype(dtype)
        for name, (shape, dtype, _) in PARAMS.items()
    }


def shardings(mesh: jax.sharding.Mesh) -> dict[str, NamedSharding]:
    return {name: NamedSharding(mesh, spec) for name, (_, _, spec) in PARAMS.items()}


def place(host: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Global arrays; each process builds only the shards of its own devices."""
    return {
        name: jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
        for (name, value), sharding in zip(host.items(), shardings(mesh).values(), strict=True)
    }


def initial_params(mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    host = host_tree(0, 0.1)
    host["gain"] = np.ones(IN, jnp.bfloat16)
    host["scale"] = np.asarray(1.0, np.float32)
    return place(host, mesh)


_DATA = np.random.default_rng(42)
_X = _DATA.standard_normal((BATCH * STEPS, IN)).astype(np.float32)
_TEACHER = _DATA.standard_normal((IN, OUT)).astype(np.float32) / np.sqrt(IN)
_Y = np.tanh(_X @ _TEACHER).astype(np.float32)


def batch(k: int, mesh: jax.sharding.Mesh) -> tuple[jax.Array, jax.Array]:
    """Minibatch ``k`` split over 'data': each process passes only its own rows."""
    rows = slice(k * BATCH, (k + 1) * BATCH)
    sharding = NamedSharding(mesh, P("data"))
    count, index = jax.process_count(), jax.process_index()
    local = slice(index * BATCH // count, (index + 1) * BATCH // count)
    x, y = _X[rows][local], _Y[rows][local]
    return (
        jax.make_array_from_process_local_data(sharding, x, (BATCH, IN)),
        jax.make_array_from_process_local_data(sharding, y, (BATCH, OUT)),
    )


def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    h = jnp.tanh(h @ params["w2"] + params["b2"]) * params["gain"].astype(jnp.float32)
    out = params["scale"] * (h @ params["w3"]) + params["b3"]
    return jnp.mean((out - y) ** 2)


# --- checks and digests ---------------------------------------------------------------


def _describe(sharding: Any) -> str:
    spec = getattr(sharding, "spec", None)
    return f"{type(sharding).__name__}({spec})" if spec is not None else repr(sharding)


def sharding_problems(
    state: Any,
    params: dict[str, jax.Array],
    mesh: jax.sharding.Mesh,
    *,
    eager: bool,
    packed: bool = False,
) -> list[str]:
    """Every state leaf not laid out as documented (docs/production.md).

    A leaf whose last key names a param (``velocity['w1']``) has that param's
    sharding. The packed buffers (keys ``'float32'``, ``'bfloat16'``) hold the
    small replicated params' buffers and are replicated over the whole mesh.
    Step counters are replicated over the mesh after a jitted init; an eager
    init makes them uncommitted scalars, which jit places itself.
    """
    problems = []
    mirrored = packs = 0
    everywhere = set(mesh.devices.flat)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        where = jax.tree_util.keystr(path)
        name = getattr(path[-1], "key", None) if path else None
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
            continue
        if name in ("float32", "bfloat16"):
            packs += 1
        elif eager:
            continue
        devices = leaf.sharding.device_set
        if devices != everywhere or not leaf.sharding.is_fully_replicated:
            problems.append(
                f"{where}: {_describe(leaf.sharding)} on {len(devices)} device(s), expected "
                "replicated over the mesh"
            )
    if mirrored == 0:
        problems.append("no state leaf mirrors a param: the check saw nothing")
    if packed and not packs:
        problems.append("a packed state without packed buffers: the check saw none")
    return problems


# --- every case in one program ----------------------------------------------------
# A tree per case ({case: params}, {case: state}); one jitted program steps all
# of them, so a run compiles once instead of once per case (compilation is
# most of the cost of this test on a CPU).


def optimizers() -> dict[str, optax.GradientTransformation]:
    return {case: build(case) for case in CASES}


def all_params(mesh: jax.sharding.Mesh) -> dict[str, Any]:
    return {case: initial_params(mesh) for case in CASES}


def init_all(txs: dict[str, optax.GradientTransformation], params: dict[str, Any]) -> Any:
    return {case: tx.init(params[case]) for case, tx in txs.items()}


def _update_all(
    txs: dict[str, optax.GradientTransformation], grads: Any, states: Any, params: Any
) -> tuple[Any, Any]:
    new_params, new_states = {}, {}
    for case, tx in txs.items():
        updates, new_states[case] = tx.update(grads[case], states[case], params[case])
        new_params[case] = optax.apply_updates(params[case], updates)
    return new_params, new_states


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

    def step(params: Any, states: Any, grads: Any) -> Any:
        return _update_all(txs, grads, states, params)

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


def gradient_program(param_shardings: Any, mesh: jax.sharding.Mesh) -> Callable[..., Any]:
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


def _gradient_trees(mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
    return place(host_tree(1), mesh), place(host_tree(2), mesh)


_REPLICATE: dict[Any, Any] = {}


def to_host(x: jax.Array) -> np.ndarray:
    """The whole array, on every process: gathered where the process holds only part of it."""
    if not x.sharding.is_fully_replicated:
        mesh = x.sharding.mesh
        if mesh not in _REPLICATE:
            _REPLICATE[mesh] = jax.jit(lambda v: v, out_shardings=NamedSharding(mesh, P()))
        x = _REPLICATE[mesh](x)
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


def collectives_in(hlo: str) -> list[str]:
    return sorted(op for op in COLLECTIVES if op in hlo)


def where_the_devices_are(mesh: jax.sharding.Mesh) -> list[list[int]]:
    """The process of each mesh device, row by row ('data' down, 'model' across)."""
    return [[int(d.process_index) for d in row] for row in mesh.devices]


def _problems(
    states: Any, params: Any, mesh: jax.sharding.Mesh, *, eager: bool
) -> dict[str, list[str]]:
    reference = initial_params(mesh)
    return {
        case: sharding_problems(
            {"params": params[case], "state": states[case]},
            reference,
            mesh,
            eager=eager,
            packed=case.endswith("/packed"),
        )
        for case in CASES
    }


def _per_case(tree: Any, states: Any) -> dict[str, dict[str, str]]:
    return {case: digests({"params": tree[case], "opt_state": states[case]}) for case in CASES}


# --- tasks ---------------------------------------------------------------------------


def _clock(report: dict[str, Any], what: str, since: float) -> float:
    now = time.monotonic()
    report.setdefault("phase_seconds", {})[what] = round(now - since, 2)
    return now


def run(spec: dict[str, Any], mesh: jax.sharding.Mesh, report: dict[str, Any]) -> None:
    txs = optimizers()
    clock = time.monotonic()
    params = all_params(mesh)
    report["eager_init"] = _problems(init_all(txs, params), params, mesh, eager=True)
    clock = _clock(report, "eager_init", clock)
    init = jax.jit(lambda p: init_all(txs, p))
    states = init(params)
    report["jit_init"] = _problems(states, params, mesh, eager=False)
    # The check can fail: a replicated velocity is wrong for the three split params.
    wrong = jax.device_put(states["momentum/per_leaf"], NamedSharding(mesh, P()))
    report["detector"] = sharding_problems(wrong, params["momentum/per_leaf"], mesh, eager=False)
    clock = _clock(report, "jit_init", clock)

    # The optimizers alone, on a fixed sequence of gradients.
    a, b = _gradient_trees(mesh)
    update = update_program(txs, params, states, per_case(fixed_gradients(a, b, jnp.int32(0))))
    report["collectives"] = collectives_in(update.as_text())
    for k in range(STEPS):
        params, states = update(params, states, per_case(fixed_gradients(a, b, jnp.int32(k))))
        if k + 1 == STALL_AT - SAVE_EVERY:  # the last checkpoint before the kill
            report["fixed_at_checkpoint"] = _per_case(params, states)
    report["after_fixed"] = _problems(states, params, mesh, eager=False)
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
    report["after_training"] = _problems(states, params, mesh, eager=False)
    finals = {
        f"{case}/{name}": to_host(value).astype(np.float32)
        for case in CASES
        for name, value in params[case].items()
    }
    if jax.process_index() == 0:
        np.savez(Path(spec["out"]) / f"{spec['name']}.npz", **finals)
    clock = _clock(report, "training_run", clock)
    zero1(mesh, report)
    clock = _clock(report, "zero1", clock)
    if spec.get("checkpoints"):
        _preempted(spec, report, update, init, (a, b), mesh)


def zero1(mesh: jax.sharding.Mesh, report: dict[str, Any]) -> None:
    """ZeRO stage 1 across processes: replicated params, each buffer split over all 8 devices.

    The same 20 steps with the velocity replicated and split: the numbers must
    not change, only where they live (and an all-gather joins the updates).
    """
    tx = momentum_jax.nesterov(_decay, 0.9)
    replicated = NamedSharding(mesh, P())
    everywhere = NamedSharding(mesh, P(AXES))  # the first axis over both processes' devices
    rng = np.random.default_rng(7)
    shapes = {"w": (64, 32), "b": (32,), "odd": (5,)}
    host = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}
    a, b = (
        {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in host.items()} for _ in "ab"
    )

    def put(tree: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_callback(v.shape, replicated, lambda i, v=v: v[i])
            for k, v in tree.items()
        }

    def split(leaf: Any) -> NamedSharding:
        # Along the first axis where it divides evenly; 'odd' and the counter stay whole.
        return everywhere if leaf.ndim and leaf.shape[0] % mesh.size == 0 else replicated

    shapes_of_state = jax.eval_shape(tx.init, put(host))
    out: dict[str, Any] = {}
    for label, layout in (("replicated", lambda _: replicated), ("zero1", split)):
        state_sharding = jax.tree.map(layout, shapes_of_state)
        params = put(host)
        state = jax.jit(tx.init, out_shardings=state_sharding)(params)

        def step(params: Any, state: Any, a: Any, b: Any, k: jax.Array) -> Any:
            kf = k.astype(jnp.float32)
            grads = jax.tree.map(lambda x, y: jnp.cos(0.7 * kf) * x + jnp.sin(0.3 * kf) * y, a, b)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        jitted = jax.jit(
            step,
            in_shardings=(replicated, state_sharding, replicated, replicated, replicated),
            out_shardings=(replicated, state_sharding),
            donate_argnums=(0, 1),
        )
        compiled = jitted.lower(params, state, put(a), put(b), jnp.asarray(0, jnp.int32)).compile()
        for k in range(STEPS):
            params, state = compiled(params, state, put(a), put(b), jnp.asarray(k, jnp.int32))
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
    mesh: jax.sharding.Mesh,
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


def abstract_params(mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        for (name, (shape, dtype, _)), sharding in zip(
            PARAMS.items(), shardings(mesh).values(), strict=True
        )
    }


def abstract_target(txs: Any, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """What restoring needs, without allocating: shapes, dtypes and shardings.

    ``jax.eval_shape`` gives the states' structure, shapes and dtypes; the
    compiled ``jax.jit(init)`` gives their shardings (each buffer its param's).
    """
    params = {case: abstract_params(mesh) for case in CASES}

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


def resume(spec: dict[str, Any], mesh: jax.sharding.Mesh, report: dict[str, Any]) -> None:
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
    report["restored"] = _problems(states, params, mesh, eager=False)
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


def die(spec: dict[str, Any], mesh: jax.sharding.Mesh, report: dict[str, Any]) -> None:
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


TASKS = {"run": run, "resume": resume, "die": die}


_CAUGHT: dict[str, list[Any]] = {"warnings": []}


def _write(spec: dict[str, Any], report: dict[str, Any]) -> None:
    report["warnings"] = [f"{w.category.__name__}: {w.message}" for w in _CAUGHT["warnings"]]
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


def main() -> None:
    _exit_with_the_parent()
    argument = sys.argv[1]
    spec = json.loads(Path(argument[1:]).read_text() if argument.startswith("@") else argument)
    spec.setdefault("name", spec["task"])
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _CAUGHT["warnings"] = caught
        setup: dict[str, Any] = {}
        if spec["num_processes"] > 1:
            setup = initialize(spec)
        mesh = make_mesh()
        report: dict[str, Any] = {
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "mesh_processes": where_the_devices_are(mesh),
            "setup": setup,
            "jax": jax.__version__,
        }
        TASKS[spec["task"]](spec, mesh, report)
        report["seconds"] = round(time.monotonic() - started, 2)
        _write(spec, report)


if __name__ == "__main__":
    main()
