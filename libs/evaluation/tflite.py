"""TFLite export for devices: one fixed canvas, batch 1, float32, float16 or int8 weights.

TFLite needs static shapes and has no image decoding, so unlike the SavedModel (`serving.py`,
any size, encoded bytes in) the TFLite model takes the image already on its canvas, the same
canvas the aligned inference uses (`inference.py`): the image at the top left, padded at the
bottom and right with the mean pixel to S x S, S = OS*k + 1.

Written as a folder: `model.tflite` and `labels.txt` (the class names, one a line, the TFLite
convention). The model (one signature, `serving_default`):
    input   image          float32 [1, S, S, 3], RGB pixels 0..255 (not normalised), padded
                           with the network's mean pixel (`Preprocessing.mean`: the ImageNet
                           mean for slim's ResNets, 127.5 for the others).
    output  probabilities  float32 [1, S, S, C]; rows and columns beyond the image are padding.

`TFLitePredictor` does the padding and the crop, so evaluation and tests run a TFLite file
exactly as the other predictors. Quantization (`quantize`):
- 'none': float32 weights and activations.
- 'float16': float16 weights, computed in float32 (half the file).
- 'int8': int8 weights and activations (post-training quantization, TensorFlow's converter),
  calibrated on real images; float32 input and output, so the interface does not change. The
  canvas-sized tail, the logits' upsampling to S x S and the softmax (`FLOAT_TAIL_OPS`), stays
  float32: TFLite's int8 softmax over the S x S x C values is several times slower than its
  float32 one (docs/performance.md), and the float tail is also the exact one.
"""
import os
import warnings

import numpy as np
import tensorflow as tf

from libs.datasets.input_pipeline import normalize
from libs.evaluation.inference import aligned_length
from libs.nets.deeplabv3 import resize_aligned_corners, upsample_logits
from libs.nets.folding import FoldedDeepLabV3
from libs.utils.preprocessing import IMAGENET_MEAN
from libs.utils.image_io import atomic_directory

QUANTIZATIONS = ('none', 'float16', 'int8')
# The TFLite builtin ops an int8 model runs in float32, after dequantizing the logits
# [1, S/OS, S/OS, C].
FLOAT_TAIL_OPS = ('RESIZE_BILINEAR', 'SOFTMAX')
INPUT_NAME = 'image'
OUTPUT_NAME = 'probabilities'


def check_canvas_size(canvas_size, output_stride):
    """Refuses a canvas that is not OS*k + 1 (features would not land on their pixels)."""
    if canvas_size < 1 or aligned_length(canvas_size, output_stride) != canvas_size:
        raise ValueError(
            f'canvas size {canvas_size} is not OS*k + 1 for output stride {output_stride}; '
            f'e.g. {aligned_length(max(canvas_size, 1), output_stride)}')


def on_canvas(pixels, canvas_size, preprocessing=IMAGENET_MEAN):
    """An image [H, W, 3] (0..255) on its S x S canvas, padded with the network's mean pixel;
    float32 [1, S, S, 3]. Images larger than the canvas are refused (ValueError)."""
    height, width = pixels.shape[:2]
    if height > canvas_size or width > canvas_size:
        raise ValueError(f'image {height}x{width} does not fit the TFLite model\'s '
                         f'{canvas_size}x{canvas_size} canvas; export with a larger '
                         '--canvas-size or resize the image')
    canvas = np.empty((1, canvas_size, canvas_size, 3), np.float32)
    canvas[:] = np.asarray(preprocessing.mean, np.float32)
    canvas[0, :height, :width] = pixels
    return canvas


def calibration_canvases(dataset, canvas_size, num_images, preprocessing=IMAGENET_MEAN):
    """Images for int8 calibration: the first `num_images` of an `eval_dataset` (normalised
    [H, W, 3] by `preprocessing`), each shrunk with corners aligned to fit the canvas if larger,
    on its canvas.

    Yields:
        [float32 [1, S, S, 3]], as `TFLiteConverter.representative_dataset` takes them.
    """
    for example in dataset.take(num_images):
        pixels = example['image'] / preprocessing.scale + tf.constant(preprocessing.mean,
                                                                       tf.float32)
        height, width = pixels.shape[:2]
        factor = min(1.0, (canvas_size - 1) / max(height - 1, width - 1, 1))
        if factor < 1.0:
            size = [round((height - 1) * factor) + 1, round((width - 1) * factor) + 1]
            pixels = resize_aligned_corners(pixels[tf.newaxis], size)[0]
        yield [on_canvas(pixels.numpy(), canvas_size, preprocessing)]


MODEL_FILE = 'model.tflite'
LABELS_FILE = 'labels.txt'


def export_tflite(model, output_dir, class_names, canvas_size=513, output_stride=16,
                  quantize='none', representative_dataset=None, log=print):
    """Writes the TFLite model of a trained `DeepLabV3`, batch norm folded, and its labels.

    Args:
        model: a trained `DeepLabV3`.
        output_dir: the folder to create (written under a temporary name and renamed); it must
            not exist, or be empty.
        class_names: C names, by class index.
        canvas_size: S, OS*k + 1: the largest image side the model takes.
        output_stride: the output stride the network runs at.
        quantize: one of `QUANTIZATIONS`.
        representative_dataset: for 'int8', a callable returning an iterable of
            [float32 [1, S, S, 3]] (see `calibration_canvases`).
        log: where the removal of a killed export's leftovers is reported.

    Returns:
        The path of the .tflite file.

    Raises:
        ValueError: a bad canvas size or quantization, or int8 without calibration images.
        FileExistsError: `output_dir` exists and is not empty.
    """
    check_canvas_size(canvas_size, output_stride)
    if quantize not in QUANTIZATIONS:
        raise ValueError(f'quantize must be one of {QUANTIZATIONS}, got {quantize!r}')
    if quantize == 'int8' and representative_dataset is None:
        raise ValueError('int8 quantization needs calibration images')
    if len(class_names) != model.num_classes:
        raise ValueError(f'{len(class_names)} class names for {model.num_classes} classes')
    folded = FoldedDeepLabV3(model)

    @tf.function(input_signature=[tf.TensorSpec([1, canvas_size, canvas_size, 3], tf.float32,
                                                name=INPUT_NAME)], autograph=False)
    def serve(image):
        logits = folded(normalize(image, folded.preprocessing), training=False,
                        output_stride=output_stride)
        logits = upsample_logits(logits, [canvas_size, canvas_size])
        return {OUTPUT_NAME: tf.nn.softmax(logits, axis=-1)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], folded)
    if quantize != 'none':
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == 'float16':
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == 'int8':
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
    model_bytes = _quantized_but_the_tail(converter) if quantize == 'int8' else converter.convert()
    with atomic_directory(output_dir, log=log) as tmp_dir:
        with open(os.path.join(tmp_dir, MODEL_FILE), 'wb') as f:
            f.write(model_bytes)
        with open(os.path.join(tmp_dir, LABELS_FILE), 'w', encoding='utf-8') as f:
            f.write(''.join(f'{name}\n' for name in class_names))
    return os.path.join(os.path.abspath(output_dir), MODEL_FILE)


def _quantized_but_the_tail(converter):
    """The int8 model of a converter set up for int8 (its calibration images included), with
    `FLOAT_TAIL_OPS` left in float32.

    Selective quantization as TensorFlow documents it: the quantization debugger calibrates with
    the converter, then quantizes every op but the listed ones. It builds a TFLite interpreter of
    its own for its debug statistics (never computed here: no debug dataset), hence the
    deprecation warning silenced here.
    """
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(FLOAT_TAIL_OPS))
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*tf.lite.Interpreter is deprecated')
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                             debug_options=options)
    return debugger.get_nondebug_quantized_model()


class TFLitePredictor:
    """Predicts one image with a TFLite file of `export_tflite`, like `MultiScalePredictor`.

    Args:
        path: a folder of `export_tflite` or the .tflite file in it.
        num_threads: interpreter threads (XNNPACK runs the convolutions).
        preprocessing: the exported network's `Preprocessing`: the images given are normalised
            by it, and the canvas is padded with its mean pixel.
    """

    def __init__(self, path, num_threads=2, preprocessing=IMAGENET_MEAN):
        self.preprocessing = preprocessing
        from ai_edge_litert.interpreter import Interpreter
        if os.path.isdir(path):
            path = os.path.join(path, MODEL_FILE)
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.canvas_size = int(self._input['shape'][1])
        self.num_classes = int(self._output['shape'][-1])

    def predict_probabilities(self, image):
        """float32 normalised image [H, W, 3] -> float32 probabilities [H, W, C] (NumPy)."""
        image = np.asarray(image, np.float32)
        height, width = image.shape[:2]
        self.interpreter.set_tensor(
            self._input['index'],
            on_canvas(image / self.preprocessing.scale
                      + np.asarray(self.preprocessing.mean, np.float32), self.canvas_size,
                      self.preprocessing))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output['index'])[0, :height, :width]

    def predict(self, image):
        """float32 normalised image [H, W, 3] -> int32 class map [H, W] (a tensor)."""
        return tf.constant(np.argmax(self.predict_probabilities(image), axis=-1).astype(np.int32))
