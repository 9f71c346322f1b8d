"""ONNX export for runtimes other than TensorFlow (ONNX Runtime): tf2onnx's conversion, float32.

The ONNX model holds what the SavedModel (`serving.py`) holds except image decoding, which ONNX
has no operator for: the mean pixel, the network with batch norm folded into its convolutions,
the inference options (scales, flip, sliding windows), upsampling and softmax. Like the
SavedModel, and unlike the TFLite model, it takes an image of any size and pads it to its
OS*k + 1 canvas itself (`inference.py`).

Written as a folder: `model.onnx` and `labels.txt` (the class names, one a line, as for TFLite).
The model (opset `OPSET`):
    input   image          uint8 [H, W, 3], RGB, any H and W.
    outputs semantic       int32 [H, W], the class of each pixel.
            probabilities  float32 [H, W, C], softmax over classes (averaged over scales/flips).
"""
import os

import tensorflow as tf

from libs.datasets import input_pipeline
from libs.evaluation.inference import InferenceOptions
from libs.evaluation.tflite import LABELS_FILE
from libs.nets.folding import FoldedDeepLabV3
from libs.utils.image_io import atomic_directory

# Opset 17: ONNX Runtime 1.12 and later run it.
OPSET = 17
MODEL_FILE = 'model.onnx'
INPUT_NAME = 'image'


def export_onnx(model, output_dir, class_names, output_stride=16, options=InferenceOptions(),
                log=print):
    """Writes the ONNX model of a trained `DeepLabV3`, batch norm folded, and its labels.

    Args:
        model: a trained `DeepLabV3`.
        output_dir: the folder to create (written under a temporary name and renamed); it must
            not exist, or be empty.
        class_names: C names, by class index.
        output_stride, options: the inference the model runs (`InferenceOptions`, float32).
        log: where the removal of a killed export's leftovers is reported.

    Returns:
        The path of the .onnx file.

    Raises:
        ValueError: a precision other than float32, or as many class names as classes not.
        FileExistsError: `output_dir` exists and is not empty (nothing is written).
    """
    if options.precision != 'float32':
        raise ValueError(f'the ONNX export is float32, not {options.precision}')
    if len(class_names) != model.num_classes:
        raise ValueError(f'{len(class_names)} class names for {model.num_classes} classes')
    import onnx
    import tf2onnx
    predictor = options.predictor(FoldedDeepLabV3(model), model.num_classes, output_stride)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name=INPUT_NAME)],
                 autograph=False)
    def serve(image):
        probabilities = predictor.predict_probabilities(
            input_pipeline.normalize(image, predictor.preprocessing))
        return {'semantic': tf.argmax(probabilities, axis=-1, output_type=tf.int32),
                'probabilities': probabilities}

    # tf2onnx deep-copies the graph, weights included, before each of its optimizers so that it
    # can skip one that fails; without the copies (a failing optimizer fails the export) a
    # ResNet-50 converts in half the time and peaks at 7 GB of memory instead of 12.
    previous = os.environ.get(tf2onnx.constants.ENV_TF2ONNX_CATCH_ERRORS)
    os.environ[tf2onnx.constants.ENV_TF2ONNX_CATCH_ERRORS] = 'FALSE'
    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature,
                                                 opset=OPSET)
    finally:
        if previous is None:
            del os.environ[tf2onnx.constants.ENV_TF2ONNX_CATCH_ERRORS]
        else:
            os.environ[tf2onnx.constants.ENV_TF2ONNX_CATCH_ERRORS] = previous
    pad_same_convolutions(proto.graph)
    onnx.checker.check_model(proto)
    with atomic_directory(output_dir, log=log) as tmp_dir:
        onnx.save(proto, os.path.join(tmp_dir, MODEL_FILE))
        with open(os.path.join(tmp_dir, LABELS_FILE), 'w', encoding='utf-8') as f:
            f.write(''.join(f'{name}\n' for name in class_names))
    return os.path.join(os.path.abspath(output_dir), MODEL_FILE)


def pad_same_convolutions(graph):
    """Writes out the padding of the stride-1 'SAME' convolutions of an ONNX graph, in place.

    tf2onnx gives a 'SAME' convolution whose input size is unknown `auto_pad=SAME_UPPER`, which
    ONNX Runtime refuses for dilated (atrous) convolutions ("Dilation not supported for
    AutoPadType::SAME_UPPER"). At stride 1 that padding does not depend on the input size:
    dilation * (kernel - 1) in total, the smaller half before, as TensorFlow pads. Strided
    convolutions (never dilated in TensorFlow) keep `auto_pad`. Loop bodies (sliding windows)
    are rewritten too.

    Args:
        graph: an `onnx.GraphProto`.

    Returns:
        The number of convolutions rewritten.
    """
    from onnx import AttributeProto, helper
    count = 0
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = ([attribute.g] if attribute.type == AttributeProto.GRAPH
                         else attribute.graphs)
            count += sum(pad_same_convolutions(subgraph) for subgraph in subgraphs)
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != 'Conv' or attributes.get('auto_pad') != b'SAME_UPPER':
            continue
        kernel = attributes['kernel_shape']
        if any(stride != 1 for stride in attributes.get('strides', [1] * len(kernel))):
            continue
        totals = [dilation * (size - 1) for dilation, size in
                  zip(attributes.get('dilations', [1] * len(kernel)), kernel)]
        kept = [a for a in node.attribute if a.name != 'auto_pad']
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute(
            'pads', [t // 2 for t in totals] + [t - t // 2 for t in totals])])
        count += 1
    return count
