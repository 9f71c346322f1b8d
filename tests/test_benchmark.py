"""benchmark.py in every mode at tiny sizes (no timing is asserted), and the FLOP counter."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from libs.utils.flops import count_flops, cpu_peak

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--num-layers', '50', '--input-size', '65', '--steps', '2', '--warmup', '1',
        '--num-images', '6', '--json']
MODE_ARGS = {
    'inference': ['--scales', '0.5,1.0', '--flip'],
    'train': ['--batch-size', '2'],
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
    assert result['cpu_peak_gflops'] > 0 and 'FLOP/cycle' in result['cpu_peak_assumption']
    assert result['peak_rss_mb'] > 0
    if mode in ('inference', 'train'):
        assert result['gflops_per_image'] > 0 and result['achieved_gflops_per_sec'] > 0
        assert result['percent_of_peak'] == pytest.approx(
            100 * result['achieved_gflops_per_sec'] / result['cpu_peak_gflops'])
        assert result['trace_count'] >= 1 and not result['retraced_while_timing']
    else:
        assert result['gflops_per_image'] is None
    if mode == 'inference':
        # The evaluate path is one trace for all scales and the flip.
        assert result['trace_count'] == 1 and result['fold_bn']
        assert set(result['single_scale_seconds']) == {'0.5', '1.0'}
        assert result['multiscale_cost_ratio'] > 0
    if mode == 'train':
        # Forward + backward costs more than the forward pass alone.
        assert result['gflops_per_image'] > 2 * result['forward_gflops_per_image'] > 0


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


def test_no_cpu_peak_on_a_gpu():
    import benchmark
    peak = {'peak_gflops': 300.0, 'assumption': '2 cores x 64 FLOP/cycle x 2.3 GHz'}
    on_gpu = benchmark.peak_figures(peak, 1500.0, '/physical_device:GPU:0')
    assert on_gpu['cpu_peak_gflops'] is None and on_gpu['percent_of_peak'] is None
    assert 'ran on /physical_device:GPU:0' in on_gpu['cpu_peak_assumption']
    on_cpu = benchmark.peak_figures(peak, 150.0, None)
    assert on_cpu == {'cpu_peak_gflops': 300.0, 'cpu_peak_assumption': peak['assumption'],
                      'percent_of_peak': 50.0}
    assert 'percent_of_peak' not in benchmark.peak_figures(peak, None, None)


def test_flop_count_of_a_convolution_is_two_per_multiply_add():
    kernel = tf.zeros([3, 3, 8, 16])
    conv = tf.function(lambda x: tf.nn.conv2d(x, kernel, 1, 'SAME', dilations=2))
    flops = count_flops(conv.get_concrete_function(tf.TensorSpec([2, 10, 12, 3 + 5])))
    assert flops == 2 * (2 * 10 * 12 * 16) * (3 * 3 * 8)


def test_cpu_peak_follows_the_flags(tmp_path):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n'
                       'model name\t: Test CPU\ncpu MHz\t\t: 2500.000\n'
                       'flags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\n')
    peak = cpu_peak(num_cores=2, cpuinfo=str(cpuinfo))
    assert peak['isa'] == 'avx2_fma' and peak['flop_per_cycle'] == 32
    assert peak['peak_gflops'] == pytest.approx(2 * 32 * 2.5)
    assert peak['cpu'] == 'Test CPU'
