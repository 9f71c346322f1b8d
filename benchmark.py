"""Speed of the project's real code paths on this machine, with random weights.

    .venv/bin/python benchmark.py --mode inference --num-layers 101 --output-stride 16 --input-size 513
    .venv/bin/python benchmark.py --mode inference --num-layers 101 --output-stride 8 \
        --height 1024 --width 2048 --crop-size 513 --steps 3 --warmup 1
    .venv/bin/python benchmark.py --mode train --num-layers 50 --input-size 321 --batch-size 2
    .venv/bin/python benchmark.py --mode train --num-layers 50 --input-size 321 --batch-size 2 \
        --precision bfloat16
    .venv/bin/python benchmark.py --mode input --input-size 321 --batch-size 2 --steps 50
    .venv/bin/python benchmark.py --mode convert --num-images 200 --steps 3
    .venv/bin/python benchmark.py --mode tflite --model-variant mobilenet_v2 --input-size 513
    .venv/bin/python benchmark.py --mode inference --model-variant xception_65 --input-size 513

`--model-variant` and the head flags are train.py's (default: the variant's head); or
`--restore-from` a run or a published checkpoint of the reference DeepLab times its network.

Modes (a step's time is the median over `--steps` steps, after `--warmup` steps that include
tracing; several timed functions run interleaved, so that load from other processes hits them
alike):
- inference: the evaluate path, `MultiScalePredictor(scales, flip).predict_probabilities` on one
  [S, S, 3] image (network, bilinear upsampling to S x S, softmax, average), with batch norm folded
  into the convolutions (`FoldedDeepLabV3`) unless `--no-fold-bn`; one scale (1.0) by default. A
  step is `--batch-size` images, one call each. With several scales or `--flip`, each
  single-scale pass is timed too and `multiscale_cost_ratio` compares the two. `--height` and
  `--width` give a non-square image (a Cityscapes frame is 1024 x 2048); `--crop-size` and
  `--stride` run sliding-window inference as evaluate.py's flags of the same names. Time and peak
  memory of whole-image against sliding-window inference: run the command twice, with and
  without `--crop-size` (one process per configuration, so each peak RSS is its own).
- train: the real train step of `libs/training/step.py` (forward, loss, backward, momentum update)
  under the default strategy (train.py's), fed one in-memory batch repeated, so input is not
  measured. `--cpu-devices N` or `--num-gpus N` runs it under train_multi_gpu.py's
  `MirroredStrategy` instead, `--batch-size` being the global batch (sync BN as configured).
- input: the training tf.data pipeline alone (read records, decode, augment, crop, batch) on a
  sample dataset of VOC-sized images written to a temporary folder unless `--data-dir` is given.
  A step is one batch; batches arrive in bursts from the prefetch buffer, so this mode reports
  the mean step (total time over batches), and wants many steps (e.g. 200).
- convert: `convert_split` (validate, encode, write shards) of a sample dataset; a step is one
  whole conversion of `--num-images` images.
- tflite: `export.py --format tflite`'s models (`--quantize` none, float16 and int8, the last
  calibrated on 4 random images) in the LiteRT interpreter (XNNPACK, `--threads`) on one canvas of
  `--input-size` (OS*k + 1), interleaved with the evaluate path in float32 and bfloat16 on the
  same image; the step is int8's, and `seconds_by_path` has every path.

The inference and tflite modes run with oneDNN's frozen weights, as evaluate.py and predict.py do
(`libs/utils/frozen_weights.py`); `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=0` in the environment times
them without.

`--precision` (inference and train) is the dtype the network computes in, through the scripts'
own path: `MultiScalePredictor(compute_dtype=...)`, the train step of a `TrainConfig(precision=...)`
(float16 with its dynamic loss scale; float16 is refused without a GPU).

Printed: seconds per step, images/s, GFLOPs per image counted by TensorFlow's profiler on the traced
graph, and the achieved GFLOP/s as a share of the measured ceiling of the precision used: the
median GFLOP/s of a `--ceiling-size`² matmul, timed in each precision (float32, bfloat16, and
float16 when used) in the same run, on the same device; for train also the share counting 3x the
forward FLOPs per image. Then peak resident memory of the process, trace counts, device and
TensorFlow version. `--json` prints all of it as one JSON line instead. The machine's other load
changes every figure: compare runs interleaved, repeated, by their medians (docs/performance.md).
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

import config as config_lib
from libs.utils.frozen_weights import assume_frozen_weights

MODES = ('inference', 'train', 'input', 'convert', 'tflite')


def build_parser():
    p = config_lib.script_parser(__doc__)
    p.add_argument('--mode', choices=MODES, default='inference', help='the code path to time')
    config_lib.add_network_args(p)
    p.add_argument('--restore-from', default=None,
                   help="time this run's or published checkpoint's network (its variant and "
                        'head; weights do not change the time) instead of the flags\' network')
    p.add_argument('--output-stride', type=int, choices=(8, 16, 32), default=16,
                   help='output stride of the network')
    p.add_argument('--num-classes', type=config_lib.class_count, default=21,
                   help='classes of the network')
    p.add_argument('--input-size', type=config_lib.crop_size, default=513,
                   help='square image or crop size')
    p.add_argument('--batch-size', type=config_lib.positive_int, default=1,
                   help='images per step')
    p.add_argument('--steps', type=config_lib.positive_int, default=5, help='timed steps')
    p.add_argument('--warmup', type=config_lib.non_negative_int, default=2,
                   help='untimed steps first (tracing)')
    p.add_argument('--threads', type=config_lib.positive_int, default=None,
                   help='intra-op threads; default every CPU this process may use')
    p.add_argument('--inter-op-threads', type=config_lib.positive_int, default=None,
                   help="threads running independent ops side by side; default TensorFlow's")
    p.add_argument('--fold-bn', action=argparse.BooleanOptionalAction, default=True,
                   help='inference: fold batch norm into the convolutions')
    p.add_argument('--scales', type=config_lib.parse_float_tuple, default=(1.0,),
                   help='inference: evaluation scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75; with '
                        'several (or --flip) each single-scale pass is timed too')
    p.add_argument('--flip', action='store_true', help='inference: add left-right flips')
    p.add_argument('--height', type=config_lib.positive_int, default=None,
                   help='inference: image height; default --input-size')
    p.add_argument('--width', type=config_lib.positive_int, default=None,
                   help='inference: image width; default --input-size')
    p.add_argument('--crop-size', type=config_lib.positive_int, default=None,
                   help='inference: sliding windows of N x N pixels (evaluate.py --crop-size); '
                        'default the whole image at once')
    p.add_argument('--stride', type=config_lib.positive_int, default=None,
                   help='inference: step between sliding windows; default two thirds of '
                        '--crop-size')
    p.add_argument('--data-dir', default=None,
                   help='input: TFRecord folder with a train split; default a sample dataset')
    p.add_argument('--num-images', type=config_lib.positive_int, default=200,
                   help='input/convert: images in the generated sample dataset')
    p.add_argument('--precision', choices=config_lib.PRECISIONS, default='float32',
                   help='inference, train: dtype the network computes in (variables stay '
                        'float32), as the scripts\' --precision; float16 needs a GPU')
    replicas = p.add_mutually_exclusive_group()
    replicas.add_argument('--cpu-devices', type=config_lib.positive_int, default=None,
                          help="train: MirroredStrategy over N logical CPU devices, as "
                               "train_multi_gpu.py's --cpu-devices")
    replicas.add_argument('--num-gpus', type=config_lib.positive_int, default=None,
                          help='train: MirroredStrategy over N GPUs, as train_multi_gpu.py')
    p.add_argument('--sync-bn', action=argparse.BooleanOptionalAction, default=True,
                   help='train, mirrored: all-reduce batch-norm statistics across replicas')
    p.add_argument('--ceiling-size', type=config_lib.positive_int, default=4096,
                   help='inference, train: the square matmul timed in each precision; its '
                        'GFLOP/s is the ceiling the step is compared with')
    p.add_argument('--json', action='store_true', help='print one JSON line')
    return p


def _time_steps(steps_by_name, steps, warmup):
    """Times several step functions, interleaved so that load from other processes hits all alike.

    Args:
        steps_by_name: {name: step()}.
        steps: timed rounds; each round calls every step once.
        warmup: untimed rounds first (tracing happens there).
    Returns:
        {name: [seconds of each timed call]}.
    """
    for _ in range(warmup):
        for step in steps_by_name.values():
            step()
    times = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def bench_inference(args, tf):
    """The evaluate path: `MultiScalePredictor` on one [H, W, 3] image (S x S unless `--height`,
    `--width`), whole or in sliding windows, `--batch-size` per step.

    With several scales or a flip, each single-scale pass (same flip) is timed in the same rounds,
    and `multiscale_cost_ratio` is the multi-scale step over the sum of the single-scale steps.
    """
    from libs.evaluation.inference import (MultiScalePredictor, _window_count, aligned_length,
                                           scaled_length)
    from libs.nets.folding import FoldedDeepLabV3
    from libs.utils.flops import count_flops

    model = build_network(args)
    net = FoldedDeepLabV3(model) if args.fold_bn else model
    height, width = args.height or args.input_size, args.width or args.input_size
    image = tf.random.stateless_uniform([height, width, 3], [0, 1], -120., 130.)
    options = dict(window=args.crop_size, stride=args.stride, compute_dtype=args.precision)
    predictors = {'all': MultiScalePredictor(net, args.num_classes, args.output_stride,
                                             args.scales, args.flip, **options)}
    if len(args.scales) > 1 or args.flip:
        predictors.update({scale: MultiScalePredictor(net, args.num_classes, args.output_stride,
                                                      (scale,), args.flip, **options)
                           for scale in args.scales})

    def step_of(predictor):
        def step():
            for _ in range(args.batch_size):
                predictor.predict_probabilities(image).numpy()
        return step

    steps = {name: step_of(predictor) for name, predictor in predictors.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    traced = predictors['all'].trace_count
    times = _time_steps(steps, args.steps, 0)

    network = tf.function(lambda x: net(x, training=False, output_stride=args.output_stride),
                          autograph=False)
    flops, num_windows = 0, 0
    stride = predictors['all'].stride
    for scale in args.scales:
        sides = [scaled_length(length, scale) for length in (height, width)]
        count = 1
        if args.crop_size:
            # Each window (the image's side where it is smaller) runs as a whole image.
            count = (_window_count(sides[0], min(args.crop_size, sides[0]), stride[0])
                     * _window_count(sides[1], min(args.crop_size, sides[1]), stride[1]))
            sides = [min(args.crop_size, side) for side in sides]
        canvas = [aligned_length(side, args.output_stride) for side in sides]
        flops += count * count_flops(network.get_concrete_function(
            tf.TensorSpec([2 if args.flip else 1, *canvas, 3], tf.float32)))
        num_windows += count
    windows_phrase = (f'windows of {args.crop_size} every {stride[0]} px' if args.crop_size
                      else 'whole image')
    extra = {'path': f'MultiScalePredictor(scales={args.scales}, flip={args.flip}, '
                     f'{windows_phrase}).predict_probabilities, one image per call',
             'image_size': [height, width], 'crop_size': args.crop_size,
             'stride': list(stride) if stride else None, 'windows_per_image': num_windows,
             'fold_bn': args.fold_bn, 'scales': list(args.scales), 'flip': args.flip,
             'trace_count': predictors['all'].trace_count,
             'retraced_while_timing': predictors['all'].trace_count != traced}
    if len(predictors) > 1:
        single = {str(scale): statistics.median(times[scale]) for scale in args.scales}
        extra.update(single_scale_seconds=single, sum_single_scale_seconds=sum(single.values()),
                     multiscale_cost_ratio=statistics.median(times['all'])
                     / sum(single.values()))
    return times['all'], flops, extra


def bench_train(args, tf):
    """The train step of `libs/training/step.py` on one in-memory batch, under the default strategy
    or, with `--cpu-devices`/`--num-gpus`, under train_multi_gpu.py's `MirroredStrategy`.

    FLOPs are the whole step's (forward, backward, update) per image; `forward_gflops_per_image`
    is the training forward pass alone.
    """
    from libs.runs.checkpoints import build_model
    from libs.training.loss_scale import DynamicLossScale
    from libs.training.step import build_optimizer, build_train_step
    from libs.utils.flops import count_flops

    config = config_lib.TrainConfig(**network_fields(args), output_stride=args.output_stride,
                                    num_classes=args.num_classes, batch_size=args.batch_size,
                                    input_size=args.input_size, sync_bn=args.sync_bn,
                                    precision=args.precision)
    if args.cpu_devices or args.num_gpus:
        from libs.training.mirrored import mirrored_strategy
        strategy = mirrored_strategy(num_gpus=args.num_gpus, cpu_devices=args.cpu_devices)
        if args.batch_size % strategy.num_replicas_in_sync:
            raise SystemExit(f'--batch-size {args.batch_size} does not split over '
                             f'{strategy.num_replicas_in_sync} replicas')
    else:
        strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(config, strategy.num_replicas_in_sync)
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
        optimizer = build_optimizer(config, global_step, model)
        loss_scale = DynamicLossScale() if args.precision == 'float16' else None
    shape = [args.batch_size, args.input_size, args.input_size]
    images = tf.random.stateless_uniform(shape + [3], [0, 1], -120., 130.)
    labels = tf.random.stateless_uniform(shape, [0, 2], 0, args.num_classes, tf.int32)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    iterator = iter(dataset)  # global batches, split over the replicas as in the loop
    train_step = build_train_step(model, optimizer, global_step, strategy, config, loss_scale)

    def step():
        loss, _ = train_step(iterator)
        float(loss)

    for _ in range(args.warmup):
        step()
    traced = train_step.experimental_get_tracing_count()
    times = _time_steps({'train': step}, args.steps, 0)['train']
    retraced = train_step.experimental_get_tracing_count() != traced
    flops = count_flops(train_step.get_concrete_function(iterator))
    forward = tf.function(lambda x: model(tf.cast(x, args.precision), training=True),
                          autograph=False)
    forward_flops = count_flops(forward.get_concrete_function(tf.TensorSpec(shape + [3])))
    return times, flops, {'path': 'libs.training.step.build_train_step, '
                                  f'{type(strategy).__name__} over '
                                  f'{strategy.num_replicas_in_sync} replica(s), in-memory batch',
                          'replicas': strategy.num_replicas_in_sync,
                          'forward_gflops_per_image': forward_flops / 1e9 / args.batch_size,
                          'trace_count': train_step.experimental_get_tracing_count(),
                          'retraced_while_timing': retraced}


def bench_tflite(args, tf, workdir):
    """TFLite interpreters of each quantization beside TensorFlow's evaluate path in float32 and
    bfloat16, on the same [S, S, 3] image (see the module docstring)."""
    import numpy as np

    from libs.evaluation import tflite
    from libs.evaluation.inference import MultiScalePredictor
    from libs.nets.folding import FoldedDeepLabV3

    size = args.input_size
    model = build_network(args)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    image = model.preprocessing.normalize(pixels)
    folded = FoldedDeepLabV3(model)
    steps = {}
    for precision in ('float32', 'bfloat16'):
        predictor = MultiScalePredictor(folded, args.num_classes, args.output_stride,
                                        compute_dtype=precision)
        steps[f'tensorflow_{precision}'] = (
            lambda p=predictor: p.predict_probabilities(image).numpy())
    names = [f'c{i}' for i in range(args.num_classes)]

    def calibration():
        for _ in range(4):
            yield [tflite.on_canvas(rng.uniform(0, 255, (size, size, 3)), size,
                                    model.preprocessing)]

    for quantize in tflite.QUANTIZATIONS:
        path = tflite.export_tflite(model, os.path.join(workdir, quantize), names, size,
                                    args.output_stride, quantize,
                                    calibration if quantize == 'int8' else None)
        predictor = tflite.TFLitePredictor(path, num_threads=args.threads or
                                           len(os.sched_getaffinity(0)),
                                           preprocessing=model.preprocessing)
        steps[f'tflite_{quantize}'] = lambda p=predictor: p.predict_probabilities(image)
    times = _time_steps(steps, args.steps, args.warmup)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    # No FLOP count: a share of a float matmul ceiling means nothing for int8 arithmetic.
    extra = {'path': 'TFLitePredictor (int8) beside MultiScalePredictor float32/bfloat16',
             'seconds_by_path': seconds,
             'int8_speedup_over_tensorflow_bfloat16':
                 seconds['tensorflow_bfloat16'] / seconds['tflite_int8'],
             'int8_speedup_over_tensorflow_float32':
                 seconds['tensorflow_float32'] / seconds['tflite_int8'],
             'bfloat16_speedup_over_float32':
                 seconds['tensorflow_float32'] / seconds['tensorflow_bfloat16']}
    return times['tflite_int8'], None, extra


def _sample_records(args, workdir):
    """A sample dataset of VOC-sized images and its records; returns (voc_dir, records_dir)."""
    from libs.datasets.voc_conversion import convert_split
    from libs.datasets.sample import write_sample_dataset

    voc_dir, records_dir = os.path.join(workdir, 'voc'), os.path.join(workdir, 'records')
    write_sample_dataset(voc_dir, num_train=args.num_images, num_val=1, size_range=(375, 500))
    convert_split(voc_dir, 'train', records_dir, progress=False)
    return voc_dir, records_dir


def bench_input(args, tf, workdir):
    from libs.datasets import input_pipeline, tfrecord

    records_dir = args.data_dir or _sample_records(args, workdir)[1]
    dataset = input_pipeline.train_dataset(tfrecord.list_shards(records_dir, 'train'),
                                           args.batch_size, crop_size=args.input_size)
    iterator = iter(dataset)

    def step():
        images, _ = next(iterator)
        images.numpy()

    times = _time_steps({'input': step}, args.steps, max(args.warmup, 5))['input']
    return times, None, {
        'path': 'libs.datasets.input_pipeline.train_dataset',
        'data': args.data_dir or f'sample dataset, {args.num_images} images of 375-500 px'}


def bench_convert(args, tf, workdir):
    from libs.datasets.voc_conversion import convert_split
    from libs.datasets.sample import write_sample_dataset

    voc_dir = os.path.join(workdir, 'voc')
    write_sample_dataset(voc_dir, num_train=args.num_images, num_val=1, size_range=(375, 500))
    runs = iter(range(args.warmup + args.steps))

    def step():
        output = os.path.join(workdir, f'records-{next(runs)}')
        convert_split(voc_dir, 'train', output, progress=False)
        shutil.rmtree(output)

    times = _time_steps({'convert': step}, args.steps, args.warmup)['convert']
    return times, None, {
        'path': 'libs.datasets.voc_conversion.convert_split',
        'data': f'sample dataset, {args.num_images} images of 375-500 px'}


def ceiling_figures(achieved_gflops, ceilings, precision):
    """The share of the matmul ceiling of `precision` that a step's GFLOP/s reached.

    Args:
        achieved_gflops: GFLOP/s of the timed step.
        ceilings: {precision name: GFLOP/s of `matmul_gflops` in it}.
        precision: the precision the step computed in.
    Returns:
        {'ceiling_gflops', 'percent_of_ceiling'}.
    """
    return {'ceiling_gflops': ceilings[precision],
            'percent_of_ceiling': 100 * achieved_gflops / ceilings[precision]}


def run(args):
    """Runs the benchmark of `args` and returns the results as a dict."""
    import tensorflow as tf

    from libs.utils.cpu import cpu_description, describe_cpu
    from libs.utils.flops import matmul_gflops

    threads = args.threads or len(os.sched_getaffinity(0))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    workdir = tempfile.mkdtemp(prefix='deeplab-bench-')
    try:
        if args.mode == 'inference':
            times, flops, extra = bench_inference(args, tf)
        elif args.mode == 'train':
            times, flops, extra = bench_train(args, tf)
        elif args.mode == 'input':
            times, flops, extra = bench_input(args, tf, workdir)
        elif args.mode == 'tflite':
            times, flops, extra = bench_tflite(args, tf, workdir)
        else:
            times, flops, extra = bench_convert(args, tf, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # Batches leave a prefetching pipeline in bursts: its throughput is the mean, not the median.
    seconds = (sum(times) / len(times) if args.mode == 'input' else statistics.median(times))
    images_per_step = args.num_images if args.mode == 'convert' else args.batch_size
    gpus = tf.config.list_physical_devices('GPU')
    result = {
        'mode': args.mode, 'model_variant': args.model_variant, 'num_layers': args.num_layers,
        'decoder_output_stride': args.decoder_output_stride,
        'restore_from': args.restore_from, 'output_stride': args.output_stride,
        'input_size': args.input_size, 'batch_size': args.batch_size, 'steps': args.steps,
        'threads': threads, 'inter_op_threads': args.inter_op_threads,
        'precision': args.precision, 'frozen_weights': args.frozen_weights,
        'seconds_per_step': seconds, 'step_time_statistic': 'mean' if args.mode == 'input'
        else 'median', 'step_times': [round(t, 4) for t in times],
        'images_per_sec': images_per_step / seconds,
        'gflops_per_image': None, 'achieved_gflops_per_sec': None,
        'device': f'GPU {gpus[0].name}' if gpus else f'CPU {describe_cpu(cpu_description())}',
        'cpu': cpu_description(),
        'tf_version': tf.__version__,
        'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        'matmul_ceilings_gflops': None,
    }
    if flops is not None:
        per_image = flops / 1e9 / (args.batch_size if args.mode == 'train' else 1)
        achieved = per_image * result['images_per_sec']
        result.update(gflops_per_image=per_image, achieved_gflops_per_sec=achieved)
        precisions = dict.fromkeys(('float32', 'bfloat16', args.precision))
        ceilings = {name: matmul_gflops(tf.as_dtype(name), args.ceiling_size)
                    for name in precisions}
        result.update(matmul_ceilings_gflops=ceilings, ceiling_size=args.ceiling_size,
                      **ceiling_figures(achieved, ceilings, args.precision))
        if args.mode == 'train':
            at_3x = 3 * extra['forward_gflops_per_image'] * result['images_per_sec']
            result['percent_of_ceiling_at_3x_forward'] = (
                ceiling_figures(at_3x, ceilings, args.precision)['percent_of_ceiling'])
    result.update(extra)
    return result


def _report(r):
    """The result as a few lines of text."""
    lines = [f'{r["mode"]}: {r["device"]}, TensorFlow {r["tf_version"]}, {r["threads"]} threads'
             + (', frozen weights' if r['frozen_weights'] else ''),
             f'  {r["seconds_per_step"]:.4f} s/step ({r["step_time_statistic"]} of {r["steps"]}), '
             f'{r["images_per_sec"]:.2f} images/s']
    if r['gflops_per_image'] is not None:
        lines.append(f'  {r["precision"]}: {r["gflops_per_image"]:.2f} GFLOP/image, '
                     f'{r["achieved_gflops_per_sec"]:.1f} GFLOP/s = '
                     f'{r["percent_of_ceiling"]:.1f}% of the {r["precision"]} matmul ceiling')
        if 'percent_of_ceiling_at_3x_forward' in r:
            lines.append(f'  counting 3x the forward pass ({r["forward_gflops_per_image"]:.2f} '
                         f'GFLOP/image): {r["percent_of_ceiling_at_3x_forward"]:.1f}% of it')
        ceilings = ', '.join(f'{name} {gflops:.1f}'
                             for name, gflops in r['matmul_ceilings_gflops'].items())
        lines.append(f'  matmul ceilings ({r["ceiling_size"]}² matmul, median of 5, this run): '
                     f'{ceilings} GFLOP/s')
    if 'multiscale_cost_ratio' in r:
        lines.append(f'  multi-scale step / sum of single-scale steps: '
                     f'{r["multiscale_cost_ratio"]:.3f} ({r["sum_single_scale_seconds"]:.3f} s)')
    for name, seconds in r.get('seconds_by_path', {}).items():
        lines.append(f'  {name}: {seconds:.4f} s')
    if 'image_size' in r:
        lines.append(f'  image {r["image_size"][0]} x {r["image_size"][1]}, '
                     f'{r["windows_per_image"]} network pass(es) per image')
    if 'trace_count' in r:
        lines.append(f'  traced {r["trace_count"]} time(s), retraced while timing: '
                     f'{r["retraced_while_timing"]}')
    lines.append(f'  peak RSS {r["peak_rss_mb"]:.0f} MB; path: {r["path"]}')
    return '\n'.join(lines)


NETWORK_FIELDS = ('model_variant', 'num_layers', 'depth_multiplier', 'depth_divisor', 'multi_grid',
                  'atrous_rates', 'aspp_separable', 'decoder_output_stride',
                  'aspp_pooling_first')


def _network_of_checkpoint(args):
    """The network fields of a run's config.json or a published checkpoint, without TensorFlow
    loading its weights."""
    import dataclasses
    from libs.runs import checkpoints, published
    prefix = checkpoints.resolve_checkpoint(args.restore_from)
    run_config = os.path.join(config_lib.run_dir_of(prefix), config_lib.CONFIG_FILE)
    if os.path.isfile(run_config):
        config = config_lib.load_run_config(prefix)
    else:
        config, _ = published.reference_config(prefix, log=lambda line: None)
    args.num_classes = config.num_classes
    return dataclasses.asdict(config)


def network_fields(args):
    """The `TrainConfig` network fields of parsed flags."""
    return {name: getattr(args, name) for name in NETWORK_FIELDS}


def build_network(args):
    """The `DeepLabV3` to time (random weights: they do not change the time)."""
    from libs.runs.checkpoints import build_model
    return build_model(config_lib.TrainConfig(**network_fields(args),
                                              output_stride=args.output_stride,
                                              num_classes=args.num_classes))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # As evaluate.py and predict.py run (libs/utils/frozen_weights.py); before TensorFlow starts.
    args.frozen_weights = (assume_frozen_weights() if args.mode in ('inference', 'tflite')
                           else False)
    if args.restore_from:
        try:
            network = _network_of_checkpoint(args)
        except (ValueError, FileNotFoundError) as e:
            parser.error(f'--restore-from: {e}')
    else:
        network = config_lib.network_from_args(parser, args)
    for name in NETWORK_FIELDS:
        setattr(args, name, network[name])
    inference_only = [f'--{name.replace("_", "-")}' for name in ('height', 'width', 'crop_size',
                                                                  'stride')
                      if getattr(args, name) is not None]
    if inference_only and args.mode != 'inference':
        parser.error(f'{", ".join(inference_only)}: for --mode inference only')
    if args.stride is not None and args.crop_size is None:
        parser.error('--stride needs --crop-size (sliding-window inference)')
    if args.precision != 'float32' and args.mode not in ('inference', 'train'):
        parser.error(f'--precision is for --mode inference and train (--mode {args.mode} '
                     + ('times each quantization and precision itself)' if args.mode == 'tflite'
                        else 'runs no network)'))
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    from libs.utils.precision import compute_dtype
    try:
        compute_dtype(args.precision)  # float16 without a GPU: refused before anything runs
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    result = run(args)
    print(json.dumps(result) if args.json else _report(result), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
