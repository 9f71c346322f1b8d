"""export.py: a SavedModel that a process knowing nothing of this repo runs like predict.py."""
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

import export
import predict
from libs.datasets import input_pipeline
from libs.evaluation.inference import MultiScalePredictor
from libs.nets.folding import FoldedDeepLabV3
from libs.runs.checkpoints import load_trained_model
from libs.utils import image_io

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


def test_saved_model_in_a_fresh_process_matches_predict(trained_run, tmp_path, capsys):
    saved = tmp_path / 'models' / 'deeplab' / '1'
    assert export.main(['--restore-from', trained_run.run_dir, '--output-dir', str(saved)]) == 0
    assert (saved / 'saved_model.pb').is_file()
    assert [p for p in os.listdir(saved.parent) if p != '1'] == []  # no temporary left behind
    # A second export does not overwrite the first.
    assert export.main(['--restore-from', trained_run.run_dir, '--output-dir', str(saved)]) == 1
    assert 'not empty' in capsys.readouterr().err

    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
                        .resize((93, 67), Image.BILINEAR))
    (tmp_path / 'in').mkdir()
    images = [tmp_path / 'in' / 'odd.png', tmp_path / 'in' / 'photo.jpg']
    Image.fromarray(smooth).save(images[0])
    Image.fromarray(smooth[:65, :81]).save(images[1], quality=90)
    out = tmp_path / 'predictions'
    assert predict.main(['--restore-from', trained_run.run_dir, '--input', str(tmp_path / 'in'),
                         '--output-dir', str(out)]) == 0

    client = tmp_path / 'client.py'
    client.write_text(_CLIENT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    done = subprocess.run([sys.executable, str(client), str(saved), str(tmp_path / 'out.npz'),
                           *map(str, images)], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    served = np.load(tmp_path / 'out.npz')
    assert served['class_names'][15] == 'person'

    model, run_config, _, _ = load_trained_model(trained_run.run_dir)
    # Both predict.py and the SavedModel run the network with batch norm folded. (The unfolded one
    # agrees with it within 1e-4 of the logits' scale, which on this barely trained model can
    # still move a boundary pixel between two classes.)
    predictor = MultiScalePredictor(FoldedDeepLabV3(model), run_config.num_classes,
                                    run_config.output_stride)
    for k, path in enumerate(images):
        with Image.open(out / (path.stem + '.png')) as mask:
            np.testing.assert_array_equal(served[f'semantic_{k}'], np.array(mask))
        expected = predictor.predict_probabilities(
            input_pipeline.normalize(image_io.read_rgb(path))).numpy()
        # The same function up to float32 rounding.
        np.testing.assert_allclose(served[f'probabilities_{k}'], expected, atol=1e-4)
