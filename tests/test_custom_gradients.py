"""The custom gradients a traced training step registers are released with the run."""
import gc
import weakref

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops

from libs.nets.layers import Conv2D
from libs.utils.custom_gradients import released_custom_gradients


def _custom_gradients():
    return {name for name in ops._gradient_registry._registry  # pylint: disable=protected-access
            if name.startswith('CustomGradient-')}


def _traced_step_graph():
    """Traces and runs a step taking the gradient of an atrous convolution (its custom tap
    gradient, `libs/nets/atrous.py`); drops the step and its weights.

    Returns:
        a weak reference to the step's traced graph, which holds the weights it captured.
    """
    conv = Conv2D('conv', 3, 8, 8, np.random.default_rng(0))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(conv(x, rate=2))
        return tape.gradient(loss, conv.kernel)

    x = tf.ones([1, 9, 9, 8])
    assert float(tf.reduce_max(tf.abs(step(x)))) > 0
    return weakref.ref(step.get_concrete_function(x).graph)


def test_a_finished_step_keeps_no_graph_alive():
    before = _custom_gradients()
    kept = _traced_step_graph()
    gc.collect()
    # The situation: tracing registered custom gradients process-wide, which keep the graph.
    leaked = _custom_gradients() - before
    assert leaked and kept() is not None
    with released_custom_gradients():
        released = _traced_step_graph()
    gc.collect()
    assert released() is None
    assert _custom_gradients() - before == leaked  # those registered outside are left alone
