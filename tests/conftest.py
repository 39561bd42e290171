"""Test configuration: Keras runs on the JAX backend, without TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
