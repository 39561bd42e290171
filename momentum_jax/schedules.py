"""Momentum schedules: pass one as the ``momentum`` argument of any transform.

Each is a function ``count -> momentum`` (a float32 scalar), evaluated, like
every optax schedule, at the number of updates already done.

=====================  ==========================================================
schedule               momentum
=====================  ==========================================================
:func:`sutskever`      rises in stages 0.5, 0.75, 0.833, ... up to a cap
:func:`demon`          decays from ``init_momentum`` to 0 over ``total_steps``
=====================  ==========================================================
"""

from momentum_jax._src._schedules import demon, sutskever

__all__ = ["demon", "sutskever"]
