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
    print(json.dumps({"devices": len(jax.devices()), "cases": cases}))


if __name__ == "__main__":
    main()
