"""Test helper: a DeepLabV3 with random weights whose probabilities are not saturated, and random
photos, for tests that compare probabilities of two inference paths."""
import numpy as np
import tensorflow as tf

from libs.datasets.input_pipeline import MEAN_RGB
from libs.nets.deeplabv3 import DeepLabV3


def photo(height, width, seed=0):
    """Random uint8 pixels [H, W, 3] and the same normalised (mean pixel subtracted), float32."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return pixels, pixels.astype(np.float32) - np.array(MEAN_RGB, np.float32)


def calibrated_deeplab(output_stride, num_classes=5):
    """A ResNet-50 DeepLabV3 whose logits are of a trained network's order, so that probabilities
    are not saturated and comparing them means something: batch-norm statistics from one batch
    of three 321-pixel photos of varied brightness and contrast (decay 0; ASPP's large rates need
    large inputs), and the classifier's weights shrunk.

    ASPP concatenates image pooling last, the order the tests' agreement bounds were measured
    with: the int8 agreement is a property of the random network, and the other order draws
    another one (measured 0.79 on one image against 0.93-0.95)."""
    model = DeepLabV3(num_classes=num_classes, depth=50, output_stride=output_stride,
                      bn_decay=0.0, seed=0, aspp_pooling_first=False)
    rng = np.random.default_rng(5)
    batch = [photo(321, 321, seed=s)[1] * rng.uniform(0.3, 1.0) + rng.uniform(-50, 50)
             for s in range(3)]
    model(tf.constant(np.stack(batch), tf.float32), training=True)
    model.classifier.kernel.assign(model.classifier.kernel * 0.5)
    return model
