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
            jnp.asarray(rng.standard_normal((16, 64)), jnp.float32),
            NamedSharding(mesh, P(None, "model")),
        ),
        "bias": jax.device_put(jnp.zeros(64), NamedSharding(mesh, P())),
        "norm": jax.device_put(jnp.ones(16), NamedSharding(mesh, P())),
    }
    # max_size=256 packs the two vectors and keeps the 1024-element kernel apart.
    tx = momentum_jax.pack_small_leaves(
        momentum_jax.momentum(0.1, 0.9, layout="per_leaf"), max_size=256
    )
    grads = jax.tree.map(lambda p: p * 0.5 + 1.0, params)
    cases = {
        "eager_init": problems(tx.init(params), params),
        "jit_init": problems(jax.jit(tx.init)(params), params),
    }
    _, state = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    cases["update"] = problems(state, params)
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
    return found


if __name__ == "__main__":
    main()
