"""Framework parity presets: other libraries' SGD, reproduced step for step.

=====================  ===========================================  ==================
preset                 reproduces                                   learning rate
=====================  ===========================================  ==================
:func:`torch_sgd`      ``torch.optim.SGD``                          outside the buffer
:func:`keras_sgd`      Keras 3 ``keras.optimizers.SGD``             inside the velocity
:func:`tf1_momentum`   ``tf.compat.v1.train.MomentumOptimizer``     outside the buffer
=====================  ===========================================  ==================
"""

from momentum_jax._src._compat import keras_sgd, tf1_momentum, torch_sgd
from momentum_jax._src._core import TorchMomentumState

__all__ = ["TorchMomentumState", "keras_sgd", "tf1_momentum", "torch_sgd"]
