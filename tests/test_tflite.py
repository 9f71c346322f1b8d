"""TFLite export: float32, float16 and int8 files, run in a fresh process that has only the
LiteRT interpreter and NumPy, against the SavedModel of the same network on the same images."""
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from calibrated import calibrated_deeplab, photo
from libs.datasets.input_pipeline import MEAN_RGB
from libs.evaluation import serving, tflite

CANVAS, OUTPUT_STRIDE = 129, 16
# Sides whose smallest OS*k + 1 canvas is the TFLite model's: there both see the same padding.
SIZES = [(129, 129), (120, 128), (114, 125)]

# Runs in a clean process: LiteRT and NumPy only, no TensorFlow, no repo code.
_CLIENT = textwrap.dedent('''
    import sys
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    images = np.load(sys.argv[2])
    interpreter = Interpreter(model_path=sys.argv[1], num_threads=2)
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    mean = np.array([123.68, 116.78, 103.94], np.float32)
    results = {}
    for name in images.files:
        pixels = images[name]
        canvas = np.empty(source['shape'], np.float32)
        canvas[:] = mean
        canvas[0, :pixels.shape[0], :pixels.shape[1]] = pixels
        interpreter.set_tensor(source['index'], canvas)
        interpreter.invoke()
        results[name] = interpreter.get_tensor(target['index'])[0, :pixels.shape[0],
                                                                 :pixels.shape[1]]
    assert 'tensorflow' not in sys.modules and 'libs' not in sys.modules
    np.savez(sys.argv[3], **results)
''')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """One network exported as a SavedModel and as TFLite in each quantization; the SavedModel's
    probabilities on the test images."""
    root = tmp_path_factory.mktemp('tflite')
    model = calibrated_deeplab(OUTPUT_STRIDE)
    pixels = {f'{h}x{w}': photo(h, w, seed=30 + k)[0] for k, (h, w) in enumerate(SIZES)}
    np.savez(root / 'images.npz', **pixels)

    def calibration():
        for k in range(6):
            yield [tflite.on_canvas(photo(CANVAS, CANVAS, seed=60 + k)[0], CANVAS)]

    names = [f'c{i}' for i in range(model.num_classes)]
    paths = {quantize: tflite.export_tflite(
        model, str(root / quantize), names, CANVAS, OUTPUT_STRIDE, quantize,
        calibration if quantize == 'int8' else None) for quantize in tflite.QUANTIZATIONS}
    assert (root / 'none' / tflite.LABELS_FILE).read_text() == 'c0\nc1\nc2\nc3\nc4\n'
    assert sorted(p.name for p in root.iterdir()) == ['float16', 'images.npz', 'int8', 'none']
    saved = tf.saved_model.load(serving.export_saved_model(
        model, str(root / 'saved'), [f'c{i}' for i in range(model.num_classes)],
        output_stride=OUTPUT_STRIDE)).signatures[serving.SIGNATURE_KEY]
    expected = {}
    for name, image in pixels.items():
        png = io.BytesIO()
        Image.fromarray(image).save(png, format='PNG')
        expected[name] = saved(**{serving.INPUT_KEY: tf.constant(png.getvalue())})[
            'probabilities'].numpy()
    return root, paths, expected


def _run_client(root, path):
    (root / 'client.py').write_text(_CLIENT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = root / f'{os.path.basename(os.path.dirname(path))}.npz'
    done = subprocess.run([sys.executable, str(root / 'client.py'), path,
                           str(root / 'images.npz'), str(out)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.parametrize('quantize,min_agreement,max_difference', [
    ('none', 0.999, 1e-4),    # the same network in float32 (near-ties may flip)
    ('float16', 0.99, 0.05),  # weights rounded to float16: measured 1.0 and 0.013
    ('int8', 0.9, 0.5),       # weights and activations in 8 bits: measured 0.93-0.95 and 0.33
])
def test_tflite_in_a_fresh_process_agrees_with_the_saved_model(exported, quantize, min_agreement,
                                                                max_difference):
    """Class maps agree where the float32 network is clear (top two probabilities 0.1 apart):
    this random network's classes are close (top probability ~0.5; a third of the pixels are
    clear), so that quantization flips near-ties that a trained network has few of."""
    root, paths, expected = exported
    results = _run_client(root, paths[quantize])
    for name, probabilities in results.items():
        top_two = np.sort(expected[name], axis=-1)[..., -2:]
        clear = top_two[..., 1] - top_two[..., 0] > 0.1
        assert clear.mean() > 0.2, clear.mean()
        same = probabilities.argmax(-1) == expected[name].argmax(-1)
        agreement = same[clear].mean()
        difference = np.abs(probabilities - expected[name]).max()
        assert agreement >= min_agreement, (quantize, name, agreement)
        assert difference <= max_difference, (quantize, name, difference)
        if quantize != 'none':
            assert difference > 1e-6  # it is quantized: not the float32 file again
    sizes = {q: os.path.getsize(p) for q, p in paths.items()}
    assert sizes['float16'] < 0.6 * sizes['none'] and sizes['int8'] < 0.35 * sizes['none']


def test_int8_model_runs_its_network_in_int8_and_its_canvas_tail_in_float32(exported):
    _, paths, _ = exported
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=paths['int8'])
    tensors = {t['index']: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # no public listing of a model's ops
    kinds = {}
    for op in ops:
        kinds.setdefault(op['op_name'], set()).update(tensors[i]['dtype'] for i in op['outputs'])
    assert kinds['CONV_2D'] == {np.int8}, kinds
    for name in tflite.FLOAT_TAIL_OPS:
        assert kinds[name] == {np.float32}, kinds
    # One dequantization, of the logits [1, S/OS, S/OS, C] (and none of the S x S canvas).
    dequantized = [o for o in ops if o['op_name'] == 'DEQUANTIZE']
    shapes = [tuple(tensors[o['outputs'][0]]['shape']) for o in dequantized]
    side = (CANVAS - 1) // OUTPUT_STRIDE + 1
    assert shapes == [(1, side, side, 5)], shapes


def test_predictor_pads_to_the_canvas_and_crops(exported):
    root, paths, expected = exported
    predictor = tflite.TFLitePredictor(paths['none'])
    assert predictor.canvas_size == CANVAS
    for name, probabilities in expected.items():
        height, width = (int(v) for v in name.split('x'))
        image = photo(height, width, seed=30 + SIZES.index((height, width)))[1]
        np.testing.assert_allclose(predictor.predict_probabilities(image), probabilities,
                                   rtol=0, atol=1e-4)
        assert predictor.predict(image).shape == (height, width)
    with pytest.raises(ValueError, match='does not fit'):
        predictor.predict(np.zeros((CANVAS + 1, 10, 3), np.float32))


def test_refusals(tmp_path):
    model = calibrated_deeplab(OUTPUT_STRIDE)
    names = [f'c{i}' for i in range(model.num_classes)]
    with pytest.raises(ValueError, match='OS\\*k \\+ 1'):
        tflite.export_tflite(model, str(tmp_path / 'a'), names, 128, OUTPUT_STRIDE)
    with pytest.raises(ValueError, match='calibration'):
        tflite.export_tflite(model, str(tmp_path / 'a'), names, CANVAS, OUTPUT_STRIDE, 'int8')
    with pytest.raises(ValueError, match='quantize'):
        tflite.export_tflite(model, str(tmp_path / 'a'), names, CANVAS, OUTPUT_STRIDE, 'int4')
    with pytest.raises(ValueError, match='class names'):
        tflite.export_tflite(model, str(tmp_path / 'a'), names[:2], CANVAS, OUTPUT_STRIDE)
    (tmp_path / 'b').mkdir()
    (tmp_path / 'b' / 'keep').write_bytes(b'keep me')
    with pytest.raises(FileExistsError):
        tflite.export_tflite(model, str(tmp_path / 'b'), names, CANVAS, OUTPUT_STRIDE)
    assert (tmp_path / 'b' / 'keep').read_bytes() == b'keep me'
    assert sorted(os.listdir(tmp_path)) == ['b']  # nothing half-written left


def test_calibration_canvases_shrink_large_images():
    images = [np.full((200, 150, 3), 10.0, np.float32), np.full((50, 60, 3), -5.0, np.float32)]
    dataset = tf.data.Dataset.from_tensor_slices({'image': tf.constant(images[:1])}).concatenate(
        tf.data.Dataset.from_tensor_slices({'image': tf.constant(images[1:2])}))
    canvases = [c[0] for c in tflite.calibration_canvases(dataset, CANVAS, 5)]
    assert len(canvases) == 2 and all(c.shape == (1, CANVAS, CANVAS, 3) for c in canvases)
    mean = np.array(MEAN_RGB, np.float32)
    # 200 x 150 -> 129 x 97 (corners aligned: 199 * 128/199 + 1, 149 * 128/199 + 1), mean beyond.
    np.testing.assert_allclose(canvases[0][0, :, :97], np.broadcast_to(10.0 + mean, (129, 97, 3)),
                               atol=1e-4)
    np.testing.assert_allclose(canvases[0][0, :, 97:], np.broadcast_to(mean, (129, 32, 3)))
    np.testing.assert_allclose(canvases[1][0, :50, :60], np.broadcast_to(-5.0 + mean, (50, 60, 3)),
                               atol=1e-4)
    np.testing.assert_allclose(canvases[1][0, 50:], np.broadcast_to(mean, (79, 129, 3)))


def test_an_export_removes_what_a_killed_export_left(tmp_path):
    """A killed writer's temporary folder (its pid gone) is removed by the next export to the
    same folder and named; one of a live process is left alone."""
    from libs.utils.image_io import atomic_directory
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)
    stale = tmp_path / f'.tmp-export-{dead_pid}-abc'
    live = tmp_path / f'.tmp-export-{os.getpid()}-xyz'
    for folder in (stale, live):
        folder.mkdir()
        (folder / 'model.tflite').write_bytes(b'half')
    lines = []
    with atomic_directory(str(tmp_path / 'export'), log=lines.append) as tmp_dir:
        (tmp_path / tmp_dir / 'model.tflite').write_bytes(b'whole')
    assert lines == [f'Removed {stale}, left by an earlier export that was killed']
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, 'export']
    assert (tmp_path / 'export' / 'model.tflite').read_bytes() == b'whole'


def test_a_second_writer_of_the_same_export_is_refused_before_it_writes(tmp_path):
    """Two exports to one folder: the second is refused when it starts, naming the first, and
    the first completes (before, the second ran its whole conversion and failed at the rename)."""
    from libs.utils.lock import FolderInUse
    from libs.utils.image_io import atomic_directory
    target = tmp_path / 'models' / '1'
    with atomic_directory(str(target)) as first:
        (tmp_path / first / 'model.tflite').write_bytes(b'first')
        with pytest.raises(FolderInUse) as refusal:
            with atomic_directory(str(target)):
                raise AssertionError('the second writer got a folder to write')
        message = str(refusal.value)
        assert f'writing {target}, pid {os.getpid()}' in message, message
        assert message.endswith('choose another --output-dir'), message
        assert os.path.isdir(first)  # the refusal left the first writer's folder alone
    assert (target / 'model.tflite').read_bytes() == b'first'
    assert sorted(p.name for p in (tmp_path / 'models').iterdir()) == ['1']  # no lock, no temp
    with atomic_directory(str(tmp_path / 'models' / '2')):  # released: the next export runs
        pass
