"""States saved by momentum_jax 0.4.0 load into the current code as they are.

``tests/golden/states_0.4.0.npz`` holds each case's state leaves by key path, as a
checkpoint does; ``states_0.4.0.pkl`` the whole pickled states (arrays as lists, so
that any NumPy reads them). Both were written by 0.4.0 with
``tests/golden/make_states_0_4_0.py``. Without ``restore_state``, each saved state
must have today's structure (the same key paths, shapes and dtypes), hold exactly
the values today's code computes, and continue exactly as an uninterrupted run
(within an ulp on other jax versions, whose XLA may fuse differently).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.golden import make_states_0_4_0 as saved

HERE = Path(__file__).with_name("golden")
LEAVES = np.load(HERE / "states_0.4.0.npz")
PICKLED = pickle.loads((HERE / "states_0.4.0.pkl").read_bytes())


def _is_list(x: Any) -> bool:
    return isinstance(x, list)


def _assert_same(a: Any, b: Any, maxulp: int = 0) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert (x.dtype, x.shape) == (y.dtype, y.shape)
        x, y = np.asarray(x), np.asarray(y)
        if maxulp and np.issubdtype(x.dtype, np.floating):
            np.testing.assert_array_max_ulp(x, y, maxulp=maxulp)
        else:
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("case", list(saved.cases()))
def test_a_saved_state_loads_and_continues(case: str) -> None:
    tx = saved.cases()[case]()
    params = saved.params(case)
    fresh = tx.init(params)
    paths, treedef = jax.tree_util.tree_flatten_with_path(fresh)
    stored = [f"{case}|{jax.tree_util.keystr(path)}" for path, _ in paths]
    assert stored == [key for key in LEAVES.files if key.startswith(f"{case}|")]
    from_npz = jax.tree.unflatten(
        treedef,
        [
            jnp.asarray(LEAVES[key]).astype(leaf.dtype)
            for key, (_, leaf) in zip(stored, paths, strict=True)
        ],
    )
    from_pickle = jax.tree.map(
        lambda leaf, listed: jnp.asarray(np.asarray(listed)).astype(leaf.dtype),
        fresh,
        PICKLED[case],
    )
    assert jax.tree.structure(jax.tree.map(lambda _: 0, PICKLED[case], is_leaf=_is_list)) == (
        jax.tree.structure(jax.tree.map(lambda _: 0, fresh))
    )
    _, now = saved.run(tx, params, fresh, range(saved.STEPS))
    # The files were written with jax 0.10.2, where they are exact; another XLA
    # may fuse a multiply-add differently: a few float32 ulps away after 5 steps
    # (AggMo's sum of three buffers, 2 ulps on jax 0.4.35).
    ulps = 0 if jax.__version__ == "0.10.2" else 4
    _assert_same(from_npz, now, ulps)
    _assert_same(from_pickle, now, ulps)
    p_mid, _ = saved.run(tx, params, tx.init(params), range(saved.STEPS))
    resumed = saved.run(tx, p_mid, from_npz, range(saved.STEPS, 2 * saved.STEPS))
    straight = saved.run(tx, params, tx.init(params), range(2 * saved.STEPS))
    _assert_same(resumed, straight, 4 * ulps)
