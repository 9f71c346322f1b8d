"""Releasing the gradient functions that `tf.custom_gradient` registers while tracing.

Inside a `tf.function`, each call of a `tf.custom_gradient` function registers its gradient in
TensorFlow's process-wide gradient registry under a new name ('CustomGradient-<n>'), and nothing
ever removes it. That gradient function holds the traced graph, and the graph every variable it
captured: a process that trains more than once (a notebook, the test suite) would keep each
finished run's weights and optimiser slots alive (~300 MB per ResNet-50 run, measured). Gradient
tapes do not read the registry (the custom gradient is recorded on the tape itself); only the
graph-mode `tf.gradients` does, which this project never calls.
"""
import contextlib

# The registry has no public API; without it (another TensorFlow), nothing is released.
from tensorflow.python.framework import ops

_PREFIX = 'CustomGradient-'


def _registry():
    registry = getattr(getattr(ops, '_gradient_registry', None), '_registry', None)
    return registry if isinstance(registry, dict) else None


@contextlib.contextmanager
def released_custom_gradients():
    """Removes, on leaving, the custom gradients registered inside: for a block after which
    nothing traced in it takes a gradient again (a training run that has returned)."""
    registry = _registry()
    before = set(registry) if registry is not None else set()
    try:
        yield
    finally:
        if registry is not None:
            for name in [n for n in registry if n.startswith(_PREFIX) and n not in before]:
                registry.pop(name, None)
