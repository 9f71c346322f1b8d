"""Floating-point operations of a traced graph, and the fp32 peak of this CPU.

The operation count is TensorFlow's own profiler (`tf.compat.v1.profiler`, float_operation), run on
a concrete function's graph: convolutions count 2 x multiply-adds, their gradients likewise, and
element-wise ops one per element. Ops without registered statistics (batch norm, resize, pad)
count 0, so the figure slightly undercounts the work the graph does.
"""
import os
import re
import time

import tensorflow as tf

# fp32 FLOP per cycle per core: two FMA pipes x vector lanes x 2 (multiply and add).
FLOP_PER_CYCLE = {'avx512': 64, 'avx2_fma': 32, 'avx': 16, 'sse': 8}


def count_flops(concrete_function):
    """Floating-point operations of one call of a concrete function (static shapes needed).

    Args:
        concrete_function: e.g. `tf.function(f).get_concrete_function(tf.TensorSpec([1, 65,
            65, 3]))`; every shape that reaches a convolution must be fully defined.
    Returns:
        int, the profiler's `total_float_ops`.
    """
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    profile = tf.compat.v1.profiler.profile(graph=concrete_function.graph, options=options)
    return int(profile.total_float_ops)


def _cpuinfo(path):
    """(model name, MHz, flags set, vendor, family) of the first processor in /proc/cpuinfo."""
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(':')
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    mhz = float(fields.get('cpu MHz', 0) or 0)
    family = int(fields['cpu family']) if fields.get('cpu family', '').isdigit() else None
    return (fields.get('model name', 'unknown CPU'), mhz, set(fields.get('flags', '').split()),
            fields.get('vendor_id', ''), family)


def cpu_peak(num_cores=None, cpuinfo='/proc/cpuinfo'):
    """The assumed fp32 peak of this CPU: cores x FLOP/cycle x clock.

    The clock is /proc/cpuinfo's `cpu MHz` (under a hypervisor the nominal clock; boost is not
    counted). FLOP/cycle follows the widest FMA the flags announce: AVX-512 64, AVX2 + FMA 32.
    Both are approximations: AMD's Zen 4 (family 25) announces AVX-512 but runs it on 256-bit FMA
    units (32 FLOP/cycle), and boosts well above the listed clock. `matmul_gflops` measures what a
    dense fp32 kernel actually reaches.

    Args:
        num_cores: cores the process may use; default the CPUs in its affinity mask.
        cpuinfo: path of the cpuinfo file.
    Returns:
        dict with 'cpu', 'cores', 'mhz', 'isa', 'flop_per_cycle', 'peak_gflops' and 'assumption'
        (the sentence that says how the peak was computed).
    """
    name, mhz, flags, vendor, family = _cpuinfo(cpuinfo)
    cores = num_cores or len(os.sched_getaffinity(0))
    if 'avx512f' in flags:
        isa = 'avx512'
    elif 'avx2' in flags and 'fma' in flags:
        isa = 'avx2_fma'
    elif 'avx' in flags:
        isa = 'avx'
    else:
        isa = 'sse'
    per_cycle = FLOP_PER_CYCLE[isa]
    peak = cores * per_cycle * mhz / 1e3
    note = ''
    if isa == 'avx512' and vendor == 'AuthenticAMD' and family == 25:
        note = ' (Zen 4: AVX-512 runs on 256-bit FMA units, 32 FLOP/cycle, at a boost clock)'
    return {
        'cpu': re.sub(r'\s+', ' ', name), 'cores': cores, 'mhz': mhz, 'isa': isa,
        'flop_per_cycle': per_cycle, 'peak_gflops': peak,
        'assumption': (f'{cores} cores x {per_cycle} fp32 FLOP/cycle ({isa}) x {mhz / 1e3:.3f} '
                       f'GHz = {peak:.1f} GFLOP/s{note}'),
    }


def matmul_gflops(size=4096, repeats=5):
    """The best fp32 GFLOP/s of a [size, size] x [size, size] matmul: a measured ceiling.

    Takes the fastest of `repeats` runs, after one warm-up, so that load from other processes
    lowers it as little as possible.
    """
    a = tf.random.stateless_normal([size, size], [0, 1])
    b = tf.random.stateless_normal([size, size], [0, 2])
    matmul = tf.function(tf.linalg.matmul)
    matmul(a, b).numpy()
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9
