"""What a network expects of its input pixels: `(x - mean) * scale` per channel.

slim's `resnet_v1` checkpoints were trained on images less the ImageNet mean pixel (vgg
preprocessing, no scaling); MobileNetV2, Xception and the reference's beta ResNets on images mapped
to [-1, 1] (`x / 127.5 - 1`, research/deeplab `_preprocess_zero_mean_unit_range`). Either way the
mean pixel becomes 0, so padding a normalised image with 0 pads the raw image with the mean pixel,
which is what the reference pads with (`feature_extractor.mean_pixel`: 127.5 for the [-1, 1]
networks).
"""
import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Attributes:
        name: 'imagenet_mean' or 'unit_range'.
        mean: the RGB pixel that becomes 0.
        scale: the factor after the subtraction.
    """
    name: str
    mean: tuple
    scale: float

    def normalize(self, image):
        """[..., 3] RGB, any real or integer dtype, values in 0..255 -> float32 [..., 3]."""
        normalized = tf.cast(image, tf.float32) - tf.constant(self.mean, tf.float32)
        return normalized if self.scale == 1.0 else normalized * self.scale

    def denormalize(self, image):
        """A normalised image (NumPy, [..., 3]) back to uint8 RGB."""
        pixels = np.asarray(image, np.float64) / self.scale + np.asarray(self.mean)
        return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


# slim's vgg / resnet_v1 ImageNet preprocessing mean.
IMAGENET_MEAN = Preprocessing('imagenet_mean', (123.68, 116.78, 103.94), 1.0)
UNIT_RANGE = Preprocessing('unit_range', (127.5, 127.5, 127.5), 1.0 / 127.5)
