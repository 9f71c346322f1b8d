"""A self-contained SavedModel for serving: encoded image bytes in, class map and probabilities out.

The SavedModel holds everything between the bytes and the answer (decoding, the mean pixel, the
network with batch norm folded into its convolutions, the inference options: scales, flips,
sliding windows, precision; upsampling, softmax), so
a client loads it with `tf.saved_model.load` or TensorFlow Serving and needs nothing of this repo.

Signature `serving_default`:
    inputs:  image_bytes    tf.string scalar, an encoded JPEG, PNG, GIF (first frame) or BMP.
    outputs: semantic       int32 [H, W], the class of each pixel at the image's own size.
             probabilities  float32 [H, W, C], softmax over classes (averaged over scales/flips).

`tf.io.decode_image` does not apply the EXIF orientation tag (predict.py does), so a JPEG photo
whose pixels are stored sideways is predicted sideways: rotate such photos upright before sending.
"""
import os

import tensorflow as tf

from libs.datasets import input_pipeline
from libs.evaluation.inference import InferenceOptions
from libs.nets.folding import FoldedDeepLabV3
from libs.utils.image_io import atomic_directory
from libs.utils.visualize import full_palette

SIGNATURE_KEY = 'serving_default'
INPUT_KEY = 'image_bytes'


class ServingModule(tf.Module):
    """What the SavedModel holds: the network and its serving function.

    Args:
        model: callable like `DeepLabV3` (`model(images, training=False, output_stride=os)`),
            whose variables are tracked, e.g. a `FoldedDeepLabV3`.
        num_classes: C.
        class_names: C names, saved as the string variable `class_names` for clients.
        output_stride: the output stride the network runs at.
        options: `InferenceOptions`: scales, flips, sliding windows, precision.
        class_colors: C (r, g, b) colours, saved as the int32 variable `class_colors` [C, 3]
            for clients that paint the class map; None for VOC's.
    """

    def __init__(self, model, num_classes, class_names, output_stride=16,
                 options=InferenceOptions(), class_colors=None):
        super().__init__(name='deeplabv3_serving')
        if len(class_names) != num_classes:
            raise ValueError(f'{len(class_names)} class names for {num_classes} classes')
        self.model = model
        self.class_names = tf.Variable(list(class_names), trainable=False, dtype=tf.string,
                                       name='class_names')
        self.class_colors = tf.Variable(full_palette(class_colors)[:num_classes].astype('int32'),
                                        trainable=False, name='class_colors')
        self._predictor = options.predictor(model, num_classes, output_stride)
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([], tf.string, name=INPUT_KEY)],
            autograph=False)

    def _serve(self, image_bytes):
        image = decode_rgb(image_bytes)
        probabilities = self._predictor.predict_probabilities(
            input_pipeline.normalize(image, self._predictor.preprocessing))
        return {'semantic': tf.argmax(probabilities, axis=-1, output_type=tf.int32),
                'probabilities': probabilities}


def decode_rgb(image_bytes):
    """Decodes a JPEG, PNG, GIF (first frame) or BMP to uint8 RGB [H, W, 3] in the graph.

    JPEGs use the accurate integer inverse DCT, the one Pillow (predict.py) uses: TensorFlow's
    default fast one differs by up to a few grey levels, enough to flip pixels of the class map.
    """
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method='INTEGER_ACCURATE'),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))


def export_saved_model(model, output_dir, class_names, output_stride=16,
                       options=InferenceOptions(), log=print, class_colors=None):
    """Writes the serving SavedModel of a trained `DeepLabV3`, batch norm folded.

    The SavedModel is written to a temporary folder beside `output_dir` and renamed, so that
    `output_dir` is either complete or absent (TensorFlow Serving may be watching its parent).

    Args:
        model: a trained `DeepLabV3`.
        output_dir: the SavedModel folder to create; it must not exist or be empty. For
            TensorFlow Serving, a version folder: `models/deeplab/1`.
        class_names: C names, by class index.
        class_colors: C (r, g, b) colours, by class index; None for VOC's.
        output_stride, options: the inference the SavedModel runs (`InferenceOptions`).
        log: where the removal of a killed export's leftovers is reported.

    Raises:
        FileExistsError: `output_dir` exists and is not empty (nothing is written).
    """
    module = ServingModule(FoldedDeepLabV3(model), model.num_classes, class_names,
                           output_stride=output_stride, options=options,
                           class_colors=class_colors)
    with atomic_directory(output_dir, log=log) as tmp_dir:
        tf.saved_model.save(module, tmp_dir,
                            signatures={SIGNATURE_KEY: module.serve.get_concrete_function()})
    return os.path.abspath(output_dir)
