"""``restore_state`` finds packed blocks by their place in the state, keeps placements.

* A packed checkpoint read without a target (nested dicts) restores into either
  layout, also when the params have a module named ``inner`` (Flax wrappers do).
* On a mesh, restored counters are uncommitted, as a fresh init leaves them, so a
  ``jax.jit`` step without ``in_shardings`` runs; buffers keep their params' shardings.
* Shape-only params (``jax.ShapeDtypeStruct``) work in the packed layout.
* A stacked (vmapped) state is refused with the fix: vmap ``restore_state``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from tests import _subprocess


def _params() -> dict[str, Any]:
    return {
        "inner": {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.arange(4.0)},
        "head": {"inner": jnp.ones(2)},
    }


def _train(tx: optax.GradientTransformation, state: Any, steps: int) -> tuple[Any, Any]:
    params = _params()
    for t in range(steps):
        grads = jax.tree.map(lambda x, t=t: x * (t + 1) + 0.5, params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _raw(state: Any, path: Path) -> Any:
    """``state`` saved with orbax and read back without a target (nested dicts)."""
    ocp = pytest.importorskip("orbax.checkpoint")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()
    return checkpointer.restore(path)


def _same(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("target", ["packed", "per_leaf"])
def test_a_packed_checkpoint_read_without_target_restores_with_inner_modules(
    tmp_path: Path, target: str
) -> None:
    packed = momentum_jax.qhm(0.1, 0.9, layout="packed")
    _, state = _train(packed, packed.init(_params()), 3)
    tx = momentum_jax.qhm(0.1, 0.9, layout=target)
    restored = momentum_jax.restore_state(_raw(state, tmp_path / "ckpt"), tx, _params())
    assert restored[0].buffer["head"]["inner"].shape == (2,)
    _same(restored[0].buffer, state[0].buffer)
    _same(_train(tx, restored, 2)[0], _train(packed, state, 2)[0])


def test_a_per_leaf_checkpoint_read_without_target_restores_packed(tmp_path: Path) -> None:
    per_leaf = momentum_jax.momentum(0.1, 0.9)
    _, state = _train(per_leaf, per_leaf.init(_params()), 3)
    packed = momentum_jax.momentum(0.1, 0.9, layout="packed")
    restored = momentum_jax.restore_state(_raw(state, tmp_path / "ckpt"), packed, _params())
    _same(restored.velocity, state.velocity)
    _same(_train(packed, restored, 2)[0], _train(per_leaf, state, 2)[0])


@pytest.mark.parametrize("target", ["packed", "per_leaf"])
@pytest.mark.parametrize("wrapper", ["masked", "partition"])
def test_a_packed_checkpoint_of_a_masked_block_read_without_target_restores(
    tmp_path: Path, wrapper: str, target: str
) -> None:
    # The packs are grouped by the params' dtypes, here not the buffers': the layout is
    # rebuilt from the params found at the block's key paths, fewer than all of them.
    def make(layout: str) -> optax.GradientTransformation:
        block = momentum_jax.momentum(0.1, 0.9, accumulator_dtype=jnp.bfloat16, layout=layout)
        if wrapper == "masked":
            return optax.masked(block, {"inner": {"w": True, "b": True}, "head": False})
        labels = {"inner": {"w": "a", "b": "a"}, "head": "b"}
        partition = getattr(optax, "partition", optax.multi_transform)  # optax 0.2.4: none
        return partition({"a": block, "b": optax.sgd(0.1)}, labels)

    packed = make("packed")
    _, state = _train(packed, packed.init(_params()), 3)
    tx = make(target)
    restored = momentum_jax.restore_state(_raw(state, tmp_path / "ckpt"), tx, _params())
    _same(_train(tx, restored, 2)[0], _train(packed, state, 2)[0])


def test_a_packed_checkpoint_read_without_target_restores_into_int8_buffers(
    tmp_path: Path,
) -> None:
    params = {"w": jnp.linspace(-1, 1, 4096).reshape(64, 64), "b": jnp.ones(64)}
    grads = {"w": jnp.cos(params["w"]), "b": jnp.full(64, 0.5)}
    packed = momentum_jax.momentum(0.1, 0.9, layout="packed")
    _, state = packed.update(grads, packed.init(params), params)
    int8 = momentum_jax.momentum(0.1, 0.9, accumulator_dtype=jnp.int8)
    from_raw = momentum_jax.restore_state(_raw(state, tmp_path / "ckpt"), int8, params)
    assert isinstance(from_raw.velocity["w"], momentum_jax.Int8Buffer)
    _same(from_raw, momentum_jax.restore_state(state, int8, params))


MESH_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    import momentum_jax
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    params = {"w": jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, P("data"))),
              "b": jax.device_put(jnp.ones(4), NamedSharding(mesh, P()))}
    report = {}
    host = jax.tree.map(np.asarray, params)
    on_host = lambda x: np.asarray(x) if isinstance(x.dtype, np.dtype) else x  # not a typed key
    sources = {  # a checkpoint on the host; a state of a single-device run, committed there
        "host": lambda tx: jax.tree.map(on_host, tx.init(params)),
        "device0": lambda tx: jax.device_put(tx.init(host), jax.devices()[0]),
    }
    for name, tx in {
        "momentum": momentum_jax.momentum(0.1, 0.9),
        "injected": optax.inject_hyperparams(momentum_jax.nesterov)(learning_rate=0.1),
        "finite": optax.apply_if_finite(momentum_jax.qhm(0.1, 0.9), 3),
        "packed": momentum_jax.momentum(0.1, 0.9, layout="packed"),
        "noise": optax.chain(momentum_jax.momentum(0.1, 0.9), optax.add_noise(0.1, 0.5, 0)),
    }.items():
        for source, saved in sources.items():
            state = momentum_jax.restore_state(saved(tx), tx, params)
            fresh = tx.init(params)
            kind = lambda x: x.sharding if x.ndim else (x._committed, getattr(x, "weak_type", 0))
            placed = [kind(a) == kind(b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(fresh))]
            report[f"{name}/{source}/placed like init"] = all(placed)
            step = jax.jit(lambda p, s, g: tx.update(g, s, p))
            try:
                step(params, state, params)
                report[f"{name}/{source}"] = "ok"
            except Exception as error:  # reported, asserted in the test
                report[f"{name}/{source}"] = str(error)[:300]
    print(json.dumps(report))
    """
)


def test_restored_counters_are_uncommitted_on_a_mesh() -> None:
    report = _subprocess.run_json(["-c", MESH_SCRIPT], devices=8, timeout=240)
    names = [
        f"{tx}/{source}"
        for tx in ("momentum", "injected", "finite", "packed", "noise")
        for source in ("host", "device0")
    ]
    assert report == {
        **{name: "ok" for name in names},
        **{f"{name}/placed like init": True for name in names},
    }


MOVE_SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import jax, jax.numpy as jnp, numpy as np
    import orbax.checkpoint as ocp
    AxisType = getattr(jax.sharding, "AxisType", None)
    if AxisType is None or not hasattr(jax, "set_mesh"):  # JAX 0.4 (the floor)
        print(json.dumps({})); sys.exit()
    from jax.sharding import NamedSharding, PartitionSpec as P
    import momentum_jax

    shapes = {"kernel": (64, 1024), "bias": (1024,)}  # on one device, both are packed

    def trained(layout, params):
        tx = momentum_jax.momentum(0.1, 0.9, layout=layout)
        state = tx.init(params)
        for k in range(2):
            grads = jax.tree.map(lambda p: p * (0.5 + k), params)  # sharded like the param
            _, state = tx.update(grads, state)
        return state

    def raw(state):  # saved, then read back without a target
        path = tempfile.mkdtemp() + "/state"
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, state)
        checkpointer.wait_until_finished()
        return checkpointer.restore(path)

    def check(saved, layout, params):
        tx = momentum_jax.momentum(0.1, 0.9, layout=layout)
        try:
            state = momentum_jax.restore_state(saved, tx, params)
        except Exception as error:  # reported, asserted in the test
            return str(error)[:300]
        fresh = tx.init(params)
        placed = all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(fresh)))
        values = all(np.array_equal(jax.device_get(state.velocity[k]), expected[k]) for k in shapes)
        return {"placed like init": placed, "values": values}

    single = {k: jnp.ones(s) for k, s in shapes.items()}
    expected = jax.tree.map(np.asarray, trained("per_leaf", single).velocity)
    from_one_device = {layout: raw(trained(layout, single)) for layout in ("per_leaf", "packed")}
    report = {}
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        specs = {"kernel": P(None, "model"), "bias": P()}  # the kernel, split, keeps its buffer
        sharded = {k: jax.device_put(jnp.ones(s), NamedSharding(mesh, specs[k])) for k, s in shapes.items()}
        from_mesh = {layout: raw(trained(layout, sharded)) for layout in ("per_leaf", "packed")}
        for source, saved in from_one_device.items():
            for layout in ("per_leaf", "packed"):
                report[f"one device {source} -> mesh {layout}"] = check(saved, layout, sharded)
    for source, saved in from_mesh.items():
        for layout in ("per_leaf", "packed"):
            report[f"mesh {source} -> one device {layout}"] = check(saved, layout, single)
    print(json.dumps(report))
    """
)


def test_checkpoints_read_without_target_move_to_and_from_explicit_mesh_axes() -> None:
    # A packed checkpoint's layout is the one it was written in, whatever the new params'
    # shardings would pack; values arrive placed as init places them, before any packing.
    pytest.importorskip("orbax.checkpoint")
    report = _subprocess.run_json(["-c", MOVE_SCRIPT], devices=8, timeout=240)
    explicit_axes = hasattr(jax.sharding, "AxisType") and hasattr(jax, "set_mesh")  # not JAX 0.4
    moves = [
        f"{a} {source} -> {b} {layout}"
        for a, b in (("one device", "mesh"), ("mesh", "one device"))
        for source in ("per_leaf", "packed")
        for layout in ("per_leaf", "packed")
    ]
    expected = {move: {"placed like init": True, "values": True} for move in moves}
    assert report == (expected if explicit_axes else {})


def test_shape_only_params_in_the_packed_layout() -> None:
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _params())
    tx = momentum_jax.momentum(0.1, 0.9, layout="packed")
    state = tx.init(shapes)
    expected = jax.eval_shape(tx.init, _params())
    assert jax.tree.structure(state) == jax.tree.structure(expected)
    assert [x.shape for x in jax.tree.leaves(state)] == [x.shape for x in jax.tree.leaves(expected)]
    _, trained = _train(tx, tx.init(_params()), 2)
    restored = momentum_jax.restore_state(trained, tx, shapes)
    _same(restored, trained)


def test_a_float32_state_restored_into_16_bit_buffers_on_committed_params() -> None:
    """Params placed on a device (committed) keep the fresh state's buffers where they
    are: the restored velocity has the new transform's dtype, not the old state's."""
    params = jax.device_put(jnp.linspace(-1.0, 1.0, 4096), jax.devices()[0])
    old = momentum_jax.momentum(0.1, 0.9)
    _, state = old.update(params, old.init(params), params)
    tx = momentum_jax.momentum(0.1, 0.9, accumulator_dtype=jnp.bfloat16)
    restored = momentum_jax.restore_state(state, tx, params)
    assert restored.velocity.dtype == jnp.bfloat16
    np.testing.assert_array_equal(restored.velocity, state.velocity.astype(jnp.bfloat16))


def test_a_stacked_state_is_refused_with_the_vmap_fix() -> None:
    tx = momentum_jax.momentum(0.1, 0.9)
    members = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), _params())
    states = jax.vmap(tx.init)(members)
    with pytest.raises(ValueError, match="stacked") as refused:
        momentum_jax.restore_state(states, tx, _params())
    assert "a stacked state? jax.vmap restore_state over it." in str(refused.value)
    assert "rebuild" not in str(refused.value)
    restored = jax.vmap(lambda s, p: momentum_jax.restore_state(s, tx, p))(states, members)
    _same(restored, states)


def test_a_stacked_packed_checkpoint_read_without_target_restores_under_vmap(
    tmp_path: Path,
) -> None:
    packed = momentum_jax.momentum(0.1, 0.9, layout="packed")
    members = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), _params())
    _, states = jax.vmap(packed.update)(members, jax.vmap(packed.init)(members))
    raw = _raw(states, tmp_path / "stacked")
    for tx in (momentum_jax.momentum(0.1, 0.9), packed):

        def restore(state: Any, params: Any, tx: Any = tx) -> Any:
            return momentum_jax.restore_state(state, tx, params)

        _same(jax.vmap(restore)(raw, members), jax.vmap(restore)(states, members))


def test_a_packed_checkpoint_read_without_target_for_other_params_is_refused() -> None:
    """Flax serialization keeps the layout a packed state was written in: params whose
    packs have the same sizes but other arrays (shapes or names changed) are refused, where
    slicing the packs by the new params would hand each array another one's buffer."""
    serialization = pytest.importorskip("flax.serialization")
    tx = momentum_jax.momentum(0.1, 0.9, layout="packed")
    written = {"a": jnp.ones(3), "b": jnp.ones(5)}
    _, state = tx.update({"a": jnp.full(3, 1.0), "b": jnp.full(5, 2.0)}, tx.init(written))
    raw = serialization.msgpack_restore(serialization.to_bytes(state))
    moved = momentum_jax.restore_state(raw, momentum_jax.momentum(0.1, 0.9), written)
    _same(moved.velocity, {"a": jnp.full(3, 0.1), "b": jnp.full(5, 0.2)})
    for other in ({"a": jnp.ones(5), "b": jnp.ones(3)}, {"Dense": jnp.ones(5), "a": jnp.ones(3)}):
        for target in (momentum_jax.momentum(0.1, 0.9), tx):
            with pytest.raises(ValueError, match="was packed for other params"):
                momentum_jax.restore_state(raw, target, other)


def test_a_typed_prng_key_in_the_chain_is_carried() -> None:
    # optax.add_noise keeps a jax.random.key (optax 0.2.4: raw uint32 key data): a scalar
    # whose dtype NumPy cannot hold.
    tx = optax.chain(optax.add_noise(0.1, 0.5, 0), momentum_jax.momentum(0.1, 0.9))
    _, state = _train(tx, tx.init(_params()), 2)
    restored = momentum_jax.restore_state(state, tx, _params())

    def data(key: jax.Array) -> jax.Array:
        typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        return jax.random.key_data(key) if typed else key

    assert restored[0].rng_key.dtype == state[0].rng_key.dtype
    _same(data(restored[0].rng_key), data(state[0].rng_key))
    _same(_train(tx, restored, 2)[0], _train(tx, state, 2)[0])


def test_arguments_are_named_as_in_the_api() -> None:
    tx = momentum_jax.momentum(0.1, 0.9)
    params = jnp.zeros(2)
    state = momentum_jax.restore_state(old_state=tx.init(params), tx=tx, params=params)
    assert isinstance(state, momentum_jax.MomentumState)
    with pytest.raises(TypeError, match=r"argument 'transform'\. Did you mean tx\?"):
        momentum_jax.restore_state(state, transform=tx, params=params)
    # In another order: the transform must be second.
    with pytest.raises(TypeError, match=r"tx must be an optax transform, got an ArrayImpl; call"):
        momentum_jax.restore_state(tx, params, state)  # type: ignore[arg-type]
    # The state and the params swapped: said so, not a field of the params "with no place".
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    for tx in (momentum_jax.momentum(0.1, 0.9), momentum_jax.qhm(0.1, layout="packed")):
        with pytest.raises(TypeError, match=r"params holds an optimizer state; call restore_st"):
            momentum_jax.restore_state(params, tx, tx.init(params))
