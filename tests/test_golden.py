"""Trajectories pinned from momentum_jax 0.1.0 (commit 26c16e8).

``tests/golden/make_golden.py`` wrote the fixture on that commit; every later
version must reproduce it bit for bit, except where a documented change of
composition moves a rounding (listed in ``ULP_TOLERANCE`` with the reason).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.golden import make_golden

# Transforms whose float32 rounding legitimately changed since 0.1.0, with the
# largest difference allowed, in units in the last place of the param.
ULP_TOLERANCE: dict[str, int] = {}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(make_golden.FIXTURE) as data:
        return dict(data)


@pytest.mark.parametrize("name", sorted(make_golden.cases()))
def test_trajectory_matches_0_1_0(name: str, golden: dict[str, np.ndarray]) -> None:
    steps = make_golden.run(name)
    for key in steps[0]:
        ours = np.stack([step[key] for step in steps])
        expected = golden[f"{name}/{key}"]
        assert ours.dtype == expected.dtype
        ulps = ULP_TOLERANCE.get(name, 0)
        if ulps == 0:
            np.testing.assert_array_equal(ours, expected, err_msg=f"{name}: param {key}")
        else:
            np.testing.assert_array_max_ulp(ours, expected, maxulp=ulps)
