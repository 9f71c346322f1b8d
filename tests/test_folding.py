"""Batch norm folded into the convolutions: the same logits, at any output stride, and a graph
TensorFlow's optimiser fuses."""
import collections

import numpy as np
import pytest
import tensorflow as tf

from libs.evaluation.inference import MultiScalePredictor
from libs.nets.deeplabv3 import DeepLabV3
from libs.nets.folding import FoldedDeepLabV3
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from test_nets import randomize_batch_norm


@pytest.fixture(scope='module')
def models():
    model = DeepLabV3(num_classes=5, depth=50, seed=4)
    randomize_batch_norm(model, seed=5)  # BN is then no identity: folding has work to do
    return model, FoldedDeepLabV3(model)


@pytest.mark.parametrize('output_stride', [8, 16])
def test_folded_logits_equal_the_model_logits(models, output_stride):
    model, folded = models
    images = tf.random.stateless_normal([2, 49, 37, 3], seed=[3, 4]) * 50.0
    expected = model(images, training=False, output_stride=output_stride).numpy()
    got = folded(images, output_stride=output_stride).numpy()
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 1.0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_folded_network_has_no_batch_norm_and_biased_convolutions(models):
    model, folded = models
    names = {v.name for v in folded.variables}
    assert not any('BatchNorm' in name for name in names)
    kernels = [n for n in names if n.endswith('/weights:0')]
    assert len(kernels) == len(model.regularized_variables)  # one per convolution
    assert {n.replace('/weights:0', '/biases:0') for n in kernels} <= names
    assert 'resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/biases:0' in names


def test_folded_model_is_for_inference_only(models):
    model, folded = models
    with pytest.raises(ValueError, match='inference only'):
        folded(tf.zeros([1, 33, 33, 3]), training=True)
    assert folded.num_classes == model.num_classes
    assert folded.output_stride == model.output_stride


def test_folded_model_in_the_evaluate_path_traces_once(models):
    _, folded = models
    predictor = MultiScalePredictor(folded, 5, output_stride=16, scales=(0.75, 1.0), flip=True)
    for size in ((33, 41), (47, 29), (33, 41)):
        probabilities = predictor.predict_probabilities(tf.zeros(size + (3,)))
        assert probabilities.shape == size + (5,)
    assert predictor.trace_count == 1


def optimised_op_types(function, spec):
    """Counts of the op types a session runs for `function` (weights as constants) after
    TensorFlow's graph optimisers (grappler, then oneDNN's rewrites)."""
    frozen = convert_variables_to_constants_v2(function.get_concrete_function(spec))
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, spec.shape)
        output, = tf.import_graph_def(frozen.graph.as_graph_def(),
                                      input_map={frozen.inputs[0].name: images},
                                      return_elements=[frozen.outputs[0].name])
    metadata = tf.compat.v1.RunMetadata()
    with tf.compat.v1.Session(graph=graph) as session:
        session.run(output, {images: np.zeros(spec.shape, np.float32)},
                    options=tf.compat.v1.RunOptions(output_partition_graphs=True),
                    run_metadata=metadata)
    return collections.Counter(node.op for partition in metadata.partition_graphs
                               for node in partition.node)


def test_folded_xception_graph_gets_its_convolutions_fused():
    """Xception's module sums feed both a ReLU and the next shortcut; written as ReLUs at
    inference, they made TensorFlow 2.21's remapper fail on the whole graph, leaving all its
    convolutions with a separate bias add and ReLU."""
    model = DeepLabV3(num_classes=3, model_variant='xception_65', atrous_rates=(6, 12, 18),
                      aspp_separable=True, decoder_output_stride=4, seed=2)
    randomize_batch_norm(model, seed=3)  # else the folded biases are 0 and optimised away
    folded = FoldedDeepLabV3(model)
    ops = optimised_op_types(tf.function(lambda x: folded(x, output_stride=16)),
                             tf.TensorSpec([1, 65, 65, 3]))
    convolutions = sum(count for op, count in ops.items() if 'Conv' in op)
    fused = sum(count for op, count in ops.items() if 'Conv' in op and 'Fused' in op)
    assert convolutions > 140, ops
    # Left unfused: the image-pooling branch's 1x1 convolution and the atrous depthwise ones
    # TensorFlow runs by space-to-batch (ASPP's rates 12 and 18).
    assert fused >= convolutions - 3, ops
    assert ops['BiasAdd'] <= 2 and ops['Relu'] <= 3, ops
