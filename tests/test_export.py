"""export.py: a SavedModel that a process knowing nothing of this repo runs like predict.py, and
an ONNX model that a process with only ONNX Runtime runs like the SavedModel."""
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from PIL import Image

import export
import predict
from libs.datasets import input_pipeline
from libs.evaluation.inference import MultiScalePredictor
from libs.nets.folding import FoldedDeepLabV3
from libs.runs.checkpoints import load_trained_model
from libs.utils import image_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a clean process from tmp_path: only TensorFlow, no repo code on the path.
_CLIENT = textwrap.dedent('''
    import sys
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(sys.argv[1])
    serve = model.signatures['serving_default']
    results = {}
    for k, path in enumerate(sys.argv[3:]):
        with open(path, 'rb') as f:
            outputs = serve(image_bytes=tf.constant(f.read()))
        results[f'semantic_{k}'] = outputs['semantic'].numpy()
        results[f'probabilities_{k}'] = outputs['probabilities'].numpy()
    results['class_names'] = model.class_names.numpy().astype(str)
    assert not any(name == 'libs' or name.startswith('libs.') for name in sys.modules)
    np.savez(sys.argv[2], **results)
''')

# Runs in a clean process from tmp_path: ONNX Runtime, NumPy and Pillow; no TensorFlow, no repo.
_ONNX_CLIENT = textwrap.dedent('''
    import sys
    import numpy as np
    import onnxruntime
    from PIL import Image

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(sys.argv[1], options,
                                           providers=['CPUExecutionProvider'])
    results = {}
    for k, path in enumerate(sys.argv[3:]):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert('RGB'))
        results[f'semantic_{k}'], results[f'probabilities_{k}'] = session.run(
            ['semantic', 'probabilities'], {'image': pixels})
    assert 'tensorflow' not in sys.modules
    assert not any(name == 'libs' or name.startswith('libs.') for name in sys.modules)
    np.savez(sys.argv[2], **results)
''')


def _run_client(source, tmp_path, model, images):
    """Runs a client script in a fresh process without the repo on its path; its outputs."""
    client = tmp_path / 'client.py'
    client.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    done = subprocess.run([sys.executable, str(client), str(model), str(tmp_path / 'out.npz'),
                           *map(str, images)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(tmp_path / 'out.npz'))


@pytest.fixture(scope='module')
def served(trained_run, tmp_path_factory):
    """The run exported by export.py as a SavedModel, two images (a PNG of odd size and a
    JPEG), and the SavedModel's outputs on them in a fresh process that has only TensorFlow."""
    root = tmp_path_factory.mktemp('export')
    saved = root / 'models' / 'deeplab' / '1'
    assert export.main(['--restore-from', trained_run.run_dir, '--output-dir', str(saved)]) == 0
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
                        .resize((93, 67), Image.BILINEAR))
    (root / 'in').mkdir()
    images = [root / 'in' / 'odd.png', root / 'in' / 'photo.jpg']
    Image.fromarray(smooth).save(images[0])
    Image.fromarray(smooth[:65, :81]).save(images[1], quality=90)
    outputs = _run_client(_CLIENT, root, saved, images)
    return types.SimpleNamespace(saved=saved, images=images, outputs=outputs)


def test_saved_model_in_a_fresh_process_matches_predict(trained_run, served, tmp_path, capsys):
    saved, images = served.saved, served.images
    assert (saved / 'saved_model.pb').is_file()
    assert [p for p in os.listdir(saved.parent) if p != '1'] == []  # no temporary left behind
    # A second export does not overwrite the first.
    assert export.main(['--restore-from', trained_run.run_dir, '--output-dir', str(saved)]) == 1
    assert 'not empty' in capsys.readouterr().err

    out = tmp_path / 'predictions'
    assert predict.main(['--restore-from', trained_run.run_dir, '--input', str(images[0].parent),
                         '--output-dir', str(out)]) == 0
    outputs = served.outputs
    assert outputs['class_names'][15] == 'person'

    model, run_config, _, _ = load_trained_model(trained_run.run_dir)
    # Both predict.py and the SavedModel run the network with batch norm folded. (The unfolded one
    # agrees with it within 1e-4 of the logits' scale, which on this barely trained model can
    # still move a boundary pixel between two classes.)
    predictor = MultiScalePredictor(FoldedDeepLabV3(model), run_config.num_classes,
                                    run_config.output_stride)
    for k, path in enumerate(images):
        with Image.open(out / (path.stem + '.png')) as mask:
            np.testing.assert_array_equal(outputs[f'semantic_{k}'], np.array(mask))
        expected = predictor.predict_probabilities(
            input_pipeline.normalize(image_io.read_rgb(path))).numpy()
        # The same function up to float32 rounding.
        np.testing.assert_allclose(outputs[f'probabilities_{k}'], expected, atol=1e-4)


def test_onnx_in_a_fresh_process_agrees_with_the_saved_model(trained_run, served, tmp_path):
    """The ONNX export, run by ONNX Runtime on the pixels the client decodes, gives the
    SavedModel's class maps and probabilities on the same images."""
    onnx_dir = tmp_path / 'onnx'
    # In a process of its own: tf2onnx's conversion peaks at several GB, which the test
    # process's allocator would keep (it was the suite's largest step up in resident memory:
    # 5.8 GB, docs/performance.md).
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'export.py'), '--restore-from',
                           trained_run.run_dir, '--output-dir', str(onnx_dir), '--format', 'onnx'],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ['onnx']  # no temporary left behind
    assert sorted(os.listdir(onnx_dir)) == ['labels.txt', 'model.onnx']
    assert (onnx_dir / 'labels.txt').read_text().splitlines()[15] == 'person'

    outputs = _run_client(_ONNX_CLIENT, tmp_path, onnx_dir / 'model.onnx', served.images)
    for k in range(len(served.images)):
        expected = served.outputs[f'semantic_{k}']
        assert len(np.unique(expected)) > 1  # a class map that can disagree
        assert outputs[f'semantic_{k}'].shape == expected.shape
        assert (outputs[f'semantic_{k}'] == expected).mean() >= 0.99
        # This barely trained run's logits are large (its batch-norm statistics have hardly
        # moved), which magnifies float32 rounding: measured 0.016. A calibrated network
        # (tests/calibrated.py) agreed within 1.2e-4, with scales, flip or windows too.
        np.testing.assert_allclose(outputs[f'probabilities_{k}'],
                                   served.outputs[f'probabilities_{k}'], atol=0.05)
