"""momentum_jax: momentum and Nesterov momentum as optax gradient transformations.

Every public transform is a pure ``optax.GradientTransformationExtraArgs``:
``init(params) -> state`` and ``update(grads, state, params=None) -> (updates,
state)``, with the velocity kept in an immutable NamedTuple state whose
structure, shapes and dtypes never change between steps. Learning rates and
momenta accept numbers, scalar arrays or optax schedules.

Leaves that do not train: integer and boolean param leaves (Equinox keeps
them in ``eqx.filter(model, eqx.is_array)``) get no buffer (``None`` in the
state) and a ``None`` update when their gradient is ``None``, as optax does;
a gradient that arrives for one is an error naming its path.

The learning-rate-free blocks :func:`scale_by_momentum`, :func:`scale_by_qhm`
and :func:`scale_by_aggmo` chain with ``optax.scale_by_learning_rate``; the
optimizers are such chains, except :func:`momentum` (learning rate inside the
velocity). :func:`lion` is ``optax.lion`` on the same machinery.
:func:`restore_state` carries a saved state into a transform's current layout.

Buffers may be narrower than the params: bfloat16 or float16, or int8 codes
with a scale per block (:class:`Int8Buffer`, read by :func:`dequantize`),
rounded to nearest or stochastically (``stochastic_rounding=True``).

State layout: every state's structure depends only on the transform's
arguments and the params, never on the backend or the environment. Each
param has its own buffer (``layout="per_leaf"``, the default); with
``layout="packed"`` the buffers of all small arrays are one flat array per
dtype (:class:`PackedState`), an option for GPUs and models with many small
arrays. Both layouts give the same numbers (stochastic rounding draws other bits).

Gradient accumulation: ``gradient_accumulation_steps=K`` adds the mean of
``K`` successive gradients into the buffers one call at a time and updates
on every ``K``-th call (:class:`AccumulationState`), with no param-sized
accumulator.
"""

from optax import ScalarOrSchedule

from momentum_jax import compat, schedules
from momentum_jax._src._core import MomentumState, momentum, nesterov, scale_by_momentum
from momentum_jax._src._int8 import Int8Buffer, dequantize
from momentum_jax._src._layout import Layout, PackedState, Slot, restore_state
from momentum_jax._src._lion import LionState, lion
from momentum_jax._src._rounding import StochasticRoundParamsState, stochastic_round_params
from momentum_jax._src._skeleton import AccumulationState
from momentum_jax._src._variants import (
    AggMoState,
    QHMState,
    aggmo,
    qhm,
    scale_by_aggmo,
    scale_by_qhm,
)

__version__ = "0.5.0"

# One line per name would make this list the longest part of the file.
# fmt: off
__all__ = [
    "AccumulationState", "AggMoState", "Int8Buffer", "Layout", "LionState", "MomentumState",
    "PackedState", "QHMState", "ScalarOrSchedule", "Slot", "StochasticRoundParamsState", "aggmo",
    "compat", "dequantize", "lion", "momentum", "nesterov", "qhm", "restore_state",
    "scale_by_aggmo", "scale_by_momentum", "scale_by_qhm", "schedules", "stochastic_round_params",
]
# fmt: on
