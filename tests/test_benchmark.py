"""benchmark.py in every mode at tiny sizes (no timing is asserted), and the FLOP counter."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from libs.utils.flops import count_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--num-layers', '50', '--input-size', '65', '--steps', '2', '--warmup', '1',
        '--num-images', '6', '--ceiling-size', '128', '--json']
MODE_ARGS = {
    'inference': ['--scales', '0.5,1.0', '--flip'],
    'train': ['--batch-size', '2', '--precision', 'bfloat16'],
    'input': ['--batch-size', '2'],
    'convert': [],
}


def run_benchmark(mode, args=None):
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmark.py'), '--mode', mode] + TINY
        + (MODE_ARGS[mode] if args is None else args), capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, completed.stdout  # one JSON line, nothing else on stdout
    return json.loads(lines[0])


@pytest.mark.parametrize('mode', sorted(MODE_ARGS))
def test_benchmark_reports_positive_figures(mode):
    result = run_benchmark(mode)
    assert result['mode'] == mode
    assert result['seconds_per_step'] > 0 and result['images_per_sec'] > 0
    assert len(result['step_times']) == 2
    assert result['device'].startswith(('CPU', 'GPU'))
    assert result['tf_version'] == tf.__version__
    assert result['peak_rss_mb'] > 0
    # As evaluate.py and predict.py run: oneDNN's frozen weights, never while training.
    assert result['frozen_weights'] == (mode == 'inference')
    if mode in ('inference', 'train'):
        assert result['gflops_per_image'] > 0 and result['achieved_gflops_per_sec'] > 0
        # The share is of the ceiling measured in the precision the step ran in (train:
        # bfloat16), and both ceilings are measured in the same run.
        ceilings = result['matmul_ceilings_gflops']
        assert set(ceilings) == {'float32', 'bfloat16'} and min(ceilings.values()) > 0
        assert result['ceiling_gflops'] == ceilings[result['precision']]
        assert result['percent_of_ceiling'] == pytest.approx(
            100 * result['achieved_gflops_per_sec'] / ceilings[result['precision']])
        assert result['trace_count'] >= 1 and not result['retraced_while_timing']
    else:
        assert result['gflops_per_image'] is None and result['matmul_ceilings_gflops'] is None
    if mode == 'inference':
        # The evaluate path is one trace for all scales and the flip.
        assert result['trace_count'] == 1 and result['fold_bn']
        assert set(result['single_scale_seconds']) == {'0.5', '1.0'}
        assert result['multiscale_cost_ratio'] > 0
    if mode == 'train':
        # Forward + backward costs more than the forward pass alone.
        assert result['gflops_per_image'] > 2 * result['forward_gflops_per_image'] > 0
        assert result['precision'] == 'bfloat16'
        assert result['percent_of_ceiling_at_3x_forward'] == pytest.approx(
            300 * result['forward_gflops_per_image'] * result['images_per_sec']
            / ceilings['bfloat16'])


@pytest.mark.slow
def test_tflite_mode_times_every_quantization_beside_tensorflow():
    result = run_benchmark('tflite', ['--steps', '1', '--warmup', '0'])
    assert set(result['seconds_by_path']) == {
        'tensorflow_float32', 'tensorflow_bfloat16', 'tflite_none', 'tflite_float16',
        'tflite_int8'}
    assert all(seconds > 0 for seconds in result['seconds_by_path'].values())
    assert result['seconds_per_step'] == result['seconds_by_path']['tflite_int8']
    assert result['int8_speedup_over_tensorflow_bfloat16'] == pytest.approx(
        result['seconds_by_path']['tensorflow_bfloat16'] / result['seconds_per_step'])
    assert result['gflops_per_image'] is None  # no fp32 peak share for int8


def test_train_step_under_the_mirrored_strategy():
    """--cpu-devices: train_multi_gpu.py's strategy, the global batch split over two replicas."""
    result = run_benchmark('train', ['--batch-size', '2', '--cpu-devices', '2'])
    assert result['replicas'] == 2 and 'MirroredStrategy' in result['path']
    assert result['images_per_sec'] > 0 and not result['retraced_while_timing']


def test_precision_refusals(capsys):
    """float16 without a GPU: one line, exit 1, before any work; --precision where no network
    runs: argparse's refusal."""
    import benchmark
    assert benchmark.main(['--mode', 'train', '--precision', 'float16']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: --precision float16 needs a GPU'), err
    with pytest.raises(SystemExit) as exit_status:
        benchmark.main(['--mode', 'input', '--precision', 'bfloat16'])
    assert exit_status.value.code == 2
    assert 'error: --precision is for --mode inference and train' in capsys.readouterr().err


def test_flop_count_of_a_convolution_is_two_per_multiply_add():
    kernel = tf.zeros([3, 3, 8, 16])
    conv = tf.function(lambda x: tf.nn.conv2d(x, kernel, 1, 'SAME', dilations=2))
    flops = count_flops(conv.get_concrete_function(tf.TensorSpec([2, 10, 12, 3 + 5])))
    assert flops == 2 * (2 * 10 * 12 * 16) * (3 * 3 * 8)


def test_the_cpu_is_named_with_its_generation_and_flags(tmp_path):
    """Every figure names its CPU: the machines moved from Zen 4 (AMD family 25) to Zen 5 (26)."""
    from libs.utils.cpu import cpu_description, describe_cpu
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n'
                       'model\t\t: 2\nmodel name\t: AMD EPYC  9005\n'
                       'flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n\n'
                       'processor\t: 1\nvendor_id\t: GenuineIntel\n')
    description = cpu_description(str(cpuinfo))
    assert description == {'name': 'AMD EPYC 9005', 'vendor': 'AuthenticAMD', 'family': 26,
                           'model': 2, 'generation': 'Zen 5',
                           'flags': ['avx512f', 'avx512_bf16', 'avx512_vnni']}
    assert describe_cpu(description) == ('AMD EPYC 9005 (AuthenticAMD family 26 model 2: Zen 5; '
                                         'avx512f avx512_bf16 avx512_vnni)')
    assert cpu_description(str(tmp_path / 'missing'))['name'] == 'unknown CPU'
