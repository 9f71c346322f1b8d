"""The inference flags of evaluate.py, predict.py and export.py on a real run: sliding windows,
precision, TFLite export and its evaluation, and their refusals."""
import json

import numpy as np
import pytest
from PIL import Image

import evaluate
import export
import predict


def _evaluate(run, tmp_path, name, *flags):
    path = tmp_path / f'{name}.json'
    assert evaluate.main(['--restore-from', run.run_dir, '--data-dir', run.data_dir,
                          '--split-name', 'val', '--output-json', str(path), *flags]) == 0
    return json.loads(path.read_text())


def test_window_as_large_as_the_images_is_the_whole_image(trained_run, tmp_path):
    whole = _evaluate(trained_run, tmp_path, 'whole')
    # The val images are 65-97 px: 97-pixel windows hold each of them whole.
    windowed = _evaluate(trained_run, tmp_path, 'windowed', '--crop-size', '97', '--stride', '5')
    assert windowed['confusion_matrix'] == whole['confusion_matrix']
    assert (windowed['crop_size'], windowed['stride']) == (97, 5)
    assert (whole['crop_size'], whole['precision']) == (None, 'float32')
    # Smaller windows are really used: the network sees parts of each image only.
    small = _evaluate(trained_run, tmp_path, 'small', '--crop-size', '33', '--stride', '16')
    assert small['num_images'] == whole['num_images'] == 3
    assert small['confusion_matrix'] != whole['confusion_matrix']


def test_bfloat16_evaluation_and_prediction(trained_run, tmp_path):
    report = _evaluate(trained_run, tmp_path, 'bf16', '--precision', 'bfloat16')
    assert report['precision'] == 'bfloat16' and report['num_images'] == 3
    photo = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / 'photo.png')
    assert predict.main(['--restore-from', trained_run.run_dir, '--input',
                         str(tmp_path / 'photo.png'), '--output-dir', str(tmp_path / 'out'),
                         '--precision', 'bfloat16', '--crop-size', '49']) == 0
    with Image.open(tmp_path / 'out' / 'photo.png') as written:
        assert written.size == (90, 70)


def test_float16_without_a_gpu_is_one_line(trained_run, tmp_path, capsys):
    assert evaluate.main(['--restore-from', trained_run.run_dir, '--data-dir',
                          trained_run.data_dir, '--split-name', 'val',
                          '--precision', 'float16']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('error: --precision float16 needs a GPU'), err


@pytest.mark.parametrize('script,flags,message', [
    (evaluate, ['--stride', '8'], '--stride needs --crop-size'),
    (export, ['--format', 'tflite', '--flip'], '--format tflite runs one scale'),
    (export, ['--quantize', 'int8'], '--quantize is for --format tflite'),
    (export, ['--format', 'onnx', '--quantize', 'int8'], '--quantize is for --format tflite'),
    (export, ['--format', 'onnx', '--precision', 'bfloat16'], '--format onnx is float32'),
    (evaluate, ['--tflite', '/nonexistent/model.tflite'], 'no such file'),
    (evaluate, ['--tflite', '/tmp', '--flip'], '--tflite runs the exported model as it is'),
])
def test_refusals(script, flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        script.main(['--restore-from', str(tmp_path), '--output-dir', str(tmp_path / 'o'), *flags]
                    if script is export else ['--restore-from', str(tmp_path), *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_tflite_int8_export_and_its_evaluation(trained_run, tmp_path, capsys):
    out = tmp_path / 'int8'
    assert export.main(['--restore-from', trained_run.run_dir, '--output-dir', str(out),
                        '--format', 'tflite', '--quantize', 'int8', '--canvas-size', '97',
                        '--num-calibration-images', '3']) == 0
    assert (out / 'model.tflite').is_file()
    assert (out / 'labels.txt').read_text().splitlines()[:2] == ['background', 'aeroplane']
    assert 'quantize int8' in capsys.readouterr().out
    report = _evaluate(trained_run, tmp_path, 'tflite', '--tflite', str(out))
    assert report['num_images'] == 3 and report['checkpoint'].endswith('int8')
    assert sum(map(sum, report['confusion_matrix'])) > 0
    # A canvas that is not OS*k + 1 is refused when the flags are parsed.
    with pytest.raises(SystemExit):
        export.main(['--restore-from', trained_run.run_dir, '--output-dir',
                     str(tmp_path / 'bad'), '--format', 'tflite', '--canvas-size', '96'])
    assert ('--canvas-size 96 is not OS*k + 1 for output stride 16; e.g. 97'
            in capsys.readouterr().err)
    assert not (tmp_path / 'bad').exists()
