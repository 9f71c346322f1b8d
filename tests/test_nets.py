"""The network: shapes, atrous == strided, derived rates, slim's names, batch norm modes."""
import numpy as np
import pytest
import tensorflow as tf

from libs.nets.aspp import aspp_rates
from libs.nets.deeplabv3 import DeepLabV3, upsample_logits
from libs.nets.resnet_v1 import unit_strides_and_rates

_MODELS = {}


def model_of_depth(depth):
    """One model per depth for the whole module: the output stride is a call argument."""
    if depth not in _MODELS:
        _MODELS[depth] = DeepLabV3(num_classes=5, depth=depth, seed=depth)
    return _MODELS[depth]


def randomize_batch_norm(model, seed):
    """Non-trivial moving statistics and affine parameters, so batch norm is not the identity."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        name = v.name
        if '/BatchNorm/' not in name:
            continue
        shape = v.shape
        if name.endswith('moving_variance:0'):
            v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif name.endswith('gamma:0'):
            v.assign(rng.uniform(0.5, 1.0, shape).astype(np.float32))
        else:
            v.assign(rng.uniform(-0.1, 0.1, shape).astype(np.float32))


@pytest.mark.parametrize('depth', [50, 101])
@pytest.mark.parametrize('output_stride,size,expected', [
    (8, 321, 41), (16, 321, 21), (32, 321, 11), (16, 97, 7), (8, 65, 9)])
def test_endpoint_shapes(depth, output_stride, size, expected):
    model = model_of_depth(depth)
    images = tf.zeros([1, size, size - 2, 3])
    _, endpoints = model.backbone(images, output_stride, training=False)
    ceil = lambda n, s: -(-n // s)
    strides = {'conv1': 2, 'pool1': 4, 'block1': 8, 'block2': 16, 'block3': 32, 'block4': 32}
    depths = {'conv1': 64, 'pool1': 64, 'block1': 256, 'block2': 512, 'block3': 1024,
              'block4': 2048}
    for name, stride in strides.items():
        stride = min(stride, output_stride)
        assert endpoints[name].shape == (1, ceil(size, stride), ceil(size - 2, stride),
                                         depths[name]), name
    logits = model(images, output_stride=output_stride)
    assert logits.shape == (1, expected, ceil(size - 2, output_stride), 5)
    assert upsample_logits(logits, (size, size - 2)).shape == (1, size, size - 2, 5)


def test_atrous_network_equals_strided_network():
    """Paper, section 3.1: atrous convolution computes the strided network's features densely."""
    model = model_of_depth(50)
    randomize_batch_norm(model, seed=1)
    images = tf.random.stateless_normal([1, 129, 97, 3], seed=[1, 2]) * 50.0
    dense, _ = model.backbone(images, 8, training=False)
    sparse, _ = model.backbone(images, 32, training=False)
    assert dense.shape[1:3] == (17, 13) and sparse.shape[1:3] == (5, 4)
    subsampled = dense[:, ::4, ::4, :]
    scale = float(tf.reduce_max(tf.abs(sparse)))
    assert scale > 0.1
    np.testing.assert_allclose(subsampled.numpy(), sparse.numpy(), atol=1e-4 * scale)


def test_aspp_rates_follow_output_stride():
    assert aspp_rates(16) == (6, 12, 18)
    assert aspp_rates(8) == (12, 24, 36)
    assert aspp_rates(32) == (3, 6, 9)


@pytest.mark.parametrize('output_stride,block3_last,block4', [
    (32, (2, 1), ((1, 1), (1, 2), (1, 4))),
    (16, (1, 1), ((1, 2), (1, 4), (1, 8))),
    (8, (1, 2), ((1, 4), (1, 8), (1, 16))),
])
def test_strides_beyond_target_become_rates(output_stride, block3_last, block4):
    plan = unit_strides_and_rates(101, output_stride, (1, 2, 4))
    assert len(plan[2]) == 23
    assert plan[2][-1] == block3_last
    assert tuple(plan[3]) == block4
    assert plan[0][-1] == (2, 1)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='multi_grid'):
        unit_strides_and_rates(50, 16, (1, 2))
    with pytest.raises(ValueError, match='output_stride'):
        unit_strides_and_rates(50, 4, (1, 2, 4))
    with pytest.raises(ValueError, match='depth'):
        DeepLabV3(depth=34)


def test_variables_match_slim_resnet_v1_50():
    """53 convolutions, each with weights and four BatchNorm variables, under slim's names."""
    model = model_of_depth(50)
    names = {v.name[:-2]: tuple(v.shape) for v in model.backbone.variables}
    kernels = [n for n in names if n.endswith('/weights')]
    assert len(kernels) == 53
    assert len(names) == 53 * 5
    for kernel in kernels:
        scope = kernel[:-len('/weights')]
        for bn in ('beta', 'gamma', 'moving_mean', 'moving_variance'):
            assert names[f'{scope}/BatchNorm/{bn}'] == (names[kernel][-1],)
    assert names['resnet_v1_50/conv1/weights'] == (7, 7, 3, 64)
    assert names['resnet_v1_50/block1/unit_1/bottleneck_v1/shortcut/weights'] == (1, 1, 64, 256)
    assert names['resnet_v1_50/block2/unit_4/bottleneck_v1/conv2/weights'] == (3, 3, 128, 128)
    assert names['resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/weights'] == (1, 1, 512, 2048)
    assert 'resnet_v1_50/block2/unit_4/bottleneck_v1/shortcut/weights' not in names
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in its 1000-way fc.
    trainable = sum(int(np.prod(v.shape)) for v in model.backbone.trainable_variables)
    assert trainable == 25_557_032 - 2_049_000


def test_resnet_v1_101_names():
    names = {v.name[:-2] for v in model_of_depth(101).backbone.variables}
    assert 'resnet_v1_101/block3/unit_23/bottleneck_v1/conv2/weights' in names
    assert 'resnet_v1_101/block3/unit_7/bottleneck_v1/conv2/BatchNorm/gamma' in names
    assert len([n for n in names if n.endswith('/weights')]) == 104


def test_weight_decay_applies_to_conv_weights_only():
    model = model_of_depth(50)
    regularized = {v.name for v in model.regularized_variables}
    assert all(n.endswith('/weights:0') for n in regularized)
    assert 'logits/semantic/weights:0' in regularized
    assert 'aspp1/weights:0' in regularized
    assert not any('BatchNorm' in n or 'biases' in n for n in regularized)
    # 53 backbone convs, 4 ASPP branches, image pooling, projection, logits.
    assert len(regularized) == 53 + 4 + 1 + 1 + 1


def _moving_and_affine(model):
    return {v.name: v.numpy().copy() for v in model.variables if '/BatchNorm/' in v.name}


def test_batch_norm_train_mode_updates_moving_statistics():
    model = DeepLabV3(num_classes=3, depth=50, seed=3, bn_decay=0.9)
    before = _moving_and_affine(model)
    model(tf.random.normal([2, 65, 65, 3]), training=True)
    after = _moving_and_affine(model)
    mean = 'resnet_v1_50/conv1/BatchNorm/moving_mean:0'
    assert np.abs(after[mean] - before[mean]).max() > 1e-3
    assert 'resnet_v1_50/conv1/BatchNorm/gamma:0' in {v.name for v in model.trainable_variables}


def test_batch_norm_frozen_mode_keeps_statistics_and_affine_fixed():
    model = DeepLabV3(num_classes=3, depth=50, seed=3, freeze_bn=True)
    before = _moving_and_affine(model)
    model(tf.random.normal([2, 65, 65, 3]), training=True)
    after = _moving_and_affine(model)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    trainable = {v.name for v in model.trainable_variables}
    assert not any('BatchNorm' in n for n in trainable)
    frozen = model(tf.ones([1, 33, 33, 3]), training=True)
    inference = model(tf.ones([1, 33, 33, 3]), training=False)
    np.testing.assert_allclose(frozen.numpy(), inference.numpy(), rtol=1e-6, atol=1e-6)


def test_same_seed_same_network():
    a = DeepLabV3(num_classes=3, depth=50, seed=7)
    b = DeepLabV3(num_classes=3, depth=50, seed=7)
    x = tf.random.normal([1, 33, 33, 3])
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
