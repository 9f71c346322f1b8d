"""Dropout after ASPP (the reference's keep 0.9): stateless masks, one per global batch, each
replica taking its rows; the model applies it in training only; config defaults per variant."""
import argparse
import json

import numpy as np
import pytest
import tensorflow as tf

import config as config_lib
from libs.nets.deeplabv3 import DeepLabV3
from libs.nets.dropout import replica_dropout, step_seed


def test_replicas_drop_their_rows_of_the_global_batch_mask():
    inputs = tf.random.stateless_normal([4, 5, 5, 16], seed=[1, 2]) + 3.0  # no zeros of its own
    seed = step_seed(1234, tf.constant(7, tf.int64))
    whole = replica_dropout(inputs, 0.8, seed).numpy()
    parts = np.concatenate([replica_dropout(inputs[r:r + 1], 0.8, seed, r, 4).numpy()
                            for r in range(4)])
    np.testing.assert_array_equal(parts, whole)
    kept = whole != 0
    assert 0.75 < kept.mean() < 0.85, kept.mean()
    np.testing.assert_allclose(whole[kept], inputs.numpy()[kept] / 0.8, rtol=1e-6)
    # The mask is a function of the seed: the same step draws it again, the next one anew.
    np.testing.assert_array_equal(replica_dropout(inputs, 0.8, seed).numpy(), whole)
    other = replica_dropout(inputs, 0.8, step_seed(1234, tf.constant(8, tf.int64))).numpy()
    assert ((other != 0) != kept).mean() > 0.1
    assert replica_dropout(tf.cast(inputs, tf.bfloat16), 0.8, seed).dtype == tf.bfloat16


@pytest.fixture(scope='module')
def models():
    kwargs = dict(num_classes=3, model_variant='mobilenet_v2', depth_multiplier=0.5, seed=3)
    return DeepLabV3(dropout_keep_prob=0.5, **kwargs), DeepLabV3(**kwargs)


def test_the_model_drops_in_training_only(models):
    dropping, plain = models
    images = tf.random.stateless_uniform([2, 33, 33, 3], seed=[4, 5], minval=-1, maxval=1)
    seed = step_seed(9, tf.constant(0, tf.int64))
    np.testing.assert_array_equal(dropping(images, training=False).numpy(),
                                  plain(images, training=False).numpy())
    with pytest.raises(ValueError, match='dropout_seed'):
        dropping(images, training=True)
    first = dropping(images, training=True, dropout_seed=seed).numpy()
    np.testing.assert_array_equal(dropping(images, training=True, dropout_seed=seed).numpy(),
                                  first)
    assert np.abs(first - plain(images, training=True, dropout_seed=seed).numpy()).max() > 1e-3
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        DeepLabV3(num_classes=3, model_variant='mobilenet_v2', dropout_keep_prob=0.0)


def test_config_takes_the_variants_dropout_and_old_runs_none(tmp_path):
    resolve = lambda **kw: config_lib.resolve_network(config_lib.TrainConfig(**kw))
    assert resolve(model_variant='mobilenet_v2').dropout_keep_prob == 0.9
    assert resolve(model_variant='xception_65').dropout_keep_prob == 0.9
    assert resolve(model_variant='resnet_v1_101_beta').dropout_keep_prob == 0.9
    assert resolve(num_layers=101).dropout_keep_prob == 1.0
    assert resolve(model_variant='xception_65', dropout_keep_prob=1.0).dropout_keep_prob == 1.0
    # A run recorded before the field: it trained without dropout, and resumes so.
    recorded = json.loads(resolve(model_variant='xception_65').to_json())
    del recorded['dropout_keep_prob']
    (tmp_path / config_lib.CONFIG_FILE).write_text(json.dumps(recorded))
    assert config_lib.load_run_config(str(tmp_path)).dropout_keep_prob == 1.0
    for bad in ('0', '1.5', 'nan'):
        with pytest.raises(argparse.ArgumentTypeError):
            config_lib.keep_probability(bad)
    assert config_lib.keep_probability('1') == 1.0
