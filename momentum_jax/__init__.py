"""momentum_jax: momentum and Nesterov momentum as optax gradient transformations.

Every public transform is a pure ``optax.GradientTransformationExtraArgs``:
``init(params) -> state`` and ``update(grads, state, params=None) -> (updates,
state)``, with the velocity kept in an immutable NamedTuple state whose
structure, shapes and dtypes never change between steps. Learning rates and
momenta accept numbers, scalar arrays or optax schedules.
"""

from momentum_jax import compat as compat
from momentum_jax import schedules as schedules
from momentum_jax._src._core import MomentumState as MomentumState
from momentum_jax._src._core import momentum as momentum
from momentum_jax._src._core import nesterov as nesterov
from momentum_jax._src._core import scale_by_momentum as scale_by_momentum
from momentum_jax._src._restore import restore_state as restore_state
from momentum_jax._src._validation import ScalarOrSchedule as ScalarOrSchedule
from momentum_jax._src._variants import AggMoState as AggMoState
from momentum_jax._src._variants import QHMState as QHMState
from momentum_jax._src._variants import aggmo as aggmo
from momentum_jax._src._variants import qhm as qhm
from momentum_jax._src._variants import scale_by_aggmo as scale_by_aggmo
from momentum_jax._src._variants import scale_by_qhm as scale_by_qhm

__version__ = "0.1.0"

__all__ = [
    "AggMoState",
    "MomentumState",
    "QHMState",
    "ScalarOrSchedule",
    "aggmo",
    "compat",
    "momentum",
    "nesterov",
    "qhm",
    "restore_state",
    "scale_by_aggmo",
    "scale_by_momentum",
    "scale_by_qhm",
    "schedules",
]
