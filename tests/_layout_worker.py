"""Sharding of the packed layout on 8 simulated CPU devices, run in a fresh process.

``tests/test_layout.py`` starts this script with 8 host devices and reads the
JSON report on its last line: for each phase, the state leaves whose sharding
is not the expected one (empty lists when all is well). A large param sharded
over the mesh must keep that sharding in its buffer; the packed buffer of the
replicated small params must be replicated, for an eager and a jitted init
and after a jitted update.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import momentum_jax
from tests.golden.make_golden import plain

COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


def problems(state: Any, params: Any) -> list[str]:
    found = []
    velocity_rest, packs = state.inner.velocity
    kernel = velocity_rest["kernel"]
    if not kernel.sharding.is_equivalent_to(params["kernel"].sharding, kernel.ndim):
        found.append(f"kernel buffer {kernel.sharding} vs param {params['kernel'].sharding}")
    for name, flat in packs.items():
        if not flat.sharding.is_fully_replicated:
            found.append(f"pack {name}: {flat.sharding}")
    return found


def main() -> None:
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(1, 8), ("data", "model"))
    rng = np.random.default_rng(0)
    params = {
        "kernel": jax.device_put(
            jnp.asarray(rng.standard_normal((256, 512)), jnp.float32),
            NamedSharding(mesh, P(None, "model")),
        ),
        "bias": jax.device_put(jnp.zeros(64), NamedSharding(mesh, P())),
        "norm": jax.device_put(jnp.ones(16), NamedSharding(mesh, P())),
    }
    # The two vectors are packed; the kernel (more than 2**16 elements) keeps its own buffer.
    tx = momentum_jax.momentum(0.1, 0.9, layout="packed")
    grads = jax.tree.map(lambda p: p * 0.5 + 1.0, params)
    cases = {
        "eager_init": problems(tx.init(params), params),
        "jit_init": problems(jax.jit(tx.init)(params), params),
    }
    update = jax.jit(tx.update)
    _, state = update(grads, jax.jit(tx.init)(params), params)
    cases["update"] = problems(state, params)
    # Replicated small params and a kernel split over "model": nothing to communicate.
    hlo = update.lower(grads, state, params).compile().as_text()
    cases["no_collectives"] = [op for op in COLLECTIVES if op in hlo]
    # restore_state between the layouts keeps every buffer where init puts it.
    per_leaf = momentum_jax.restore_state(state, momentum_jax.momentum(0.1, 0.9), params)
    cases["restored_per_leaf"] = [
        f"{name} buffer {buffer.sharding} vs param {params[name].sharding}"
        for name, buffer in per_leaf.velocity.items()
        if not buffer.sharding.is_equivalent_to(params[name].sharding, buffer.ndim)
    ]
    cases["restored_packed"] = problems(momentum_jax.restore_state(per_leaf, tx, params), params)
    cases.update(explicit_axes(rng))
    print(json.dumps({"devices": len(jax.devices()), "cases": cases}))


def explicit_axes(rng: Any) -> dict[str, list[str]]:
    """Over explicit mesh axes a small but sharded param keeps its own, sharded buffer."""
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None or not hasattr(jax, "set_mesh"):
        return {}  # JAX without explicit axes: nothing to check
    grid = np.array(jax.devices()).reshape(2, 4)
    mesh = jax.sharding.Mesh(grid, ("data", "model"), axis_types=(axis_type.Explicit,) * 2)
    found: dict[str, list[str]] = {}
    with jax.set_mesh(mesh):
        params = {
            "split": jax.device_put(
                jnp.asarray(rng.standard_normal((6, 16)), jnp.float32),
                NamedSharding(mesh, P(None, "model")),
            ),
            "bias": jax.device_put(jnp.zeros(16), NamedSharding(mesh, P())),
        }
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
        updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        found["explicit_update"] = (
            []
            if updates["split"].sharding.spec == params["split"].sharding.spec
            else [f"split update {updates['split'].sharding}"]
        )
        state = jax.jit(tx.update)(grads, tx.init(params), params)[1]
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
    return found


if __name__ == "__main__":
    main()
