"""Agreement with the reference DeepLab's own TF1 graph, given the same weights.

For each configuration, two steps:
  a. a subprocess builds the reference's inference graph (tensorflow/models research/deeplab,
     `model.predict_labels` at scale 1, the way its eval.py does, with the reference's own flags)
     from the user's checkout of `research/`, in TF1 graph mode on TF-slim; sets every variable
     to random non-trivial values (batch norm's moving statistics near the image's own, from one
     pass of the same graph in training mode, so that activations stay O(1)); saves them as the
     reference's train.py does (`model.ckpt-N` with `global_step`); runs a fixed random image
     of OS*k + 1 pixels (odd, not square); saves its logits (before upsampling and upsampled
     to the image), probabilities and argmax;
  b. this process loads that checkpoint with `load_trained_model` (the reference checkpoint is
     recognised by its names) and predicts the same image with this project's inference path
     (`MultiScalePredictor`, scale 1, no flip; logits via the model and `upsample_logits`, as
     the predictor computes them), and compares.

Nothing of the reference is in this file: it imports the user's checkout. The reference's
modules import `tensorflow` (TF1 API) and `tf.contrib.slim`: inside the subprocess only, and
only for modules under the checkout's `deeplab/` and `slim/nets/`, their `import tensorflow` sees
`tf.compat.v1` with a `contrib` whose `slim`, `layers` and `framework` are the tf_slim package
(`contrib.slim.nets` is `tf_slim.nets`). TF-slim needs two packages kept out of the project's
venv (bench/requirements-reference.txt):

  .venv/bin/pip install --no-deps --target /tmp/slim -r bench/requirements-reference.txt
  .venv/bin/python bench/reference_agreement.py --models-research ~/models/research \\
      --slim-path /tmp/slim --json agreement.json

Prints one line per configuration: the largest absolute difference of the logits (at the
image size, and before upsampling), that difference relative to the largest reference logit,
the largest difference of the probabilities, and the share of pixels whose argmax agrees.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = 'bench/requirements-reference.txt'
STEP = 1234  # the checkpoint's global_step
SEED = 20261202


@dataclasses.dataclass(frozen=True)
class Config:
    """One network of the reference, as its flags configure it.

    Attributes:
        name: the configuration's name on the command line.
        variant: `--model_variant`.
        output_stride: `--output_stride` (this project's `output_stride`).
        size: (height, width) of the image, each OS*k + 1.
        atrous_rates: `--atrous_rates` at this output stride; () for none.
        separable: `--aspp_with_separable_conv`.
        decoder_output_stride: `--decoder_output_stride`; None: no decoder.
        depth_multiplier: `--depth_multiplier`.
        multi_grid: `--multi_grid`; None: the network's default.
        classes: the logits (21: PASCAL VOC).
    """
    name: str
    variant: str
    output_stride: int
    size: tuple
    atrous_rates: tuple = ()
    separable: bool = False
    decoder_output_stride: int = None
    depth_multiplier: float = 1.0
    multi_grid: tuple = None
    classes: int = 21

    def reference_flags(self):
        """The reference's flags (common.py) for this configuration."""
        flags = [f'--model_variant={self.variant}',
                 f'--depth_multiplier={self.depth_multiplier}',
                 f'--aspp_with_separable_conv={self.separable}',
                 '--decoder_use_separable_conv=True']
        if self.decoder_output_stride:
            flags.append(f'--decoder_output_stride={self.decoder_output_stride}')
        for rate in self.multi_grid or ():
            flags.append(f'--multi_grid={rate}')
        return flags


CONFIGS = [
    # the published deeplabv3_mnv2_pascal_train_aug: image pooling and aspp0 only, no decoder
    Config('mobilenet_v2_os16', 'mobilenet_v2', 16, (129, 97)),
    Config('mobilenet_v2_os8', 'mobilenet_v2', 8, (65, 97)),
    Config('mobilenet_v2_dm05_os16', 'mobilenet_v2', 16, (129, 97), depth_multiplier=0.5),
    # deeplabv3_pascal_train_aug: separable ASPP 6,12,18 (12,24,36 at OS 8), decoder at OS 4
    Config('xception_65_os16', 'xception_65', 16, (129, 97), (6, 12, 18), True, 4),
    Config('xception_65_os8', 'xception_65', 8, (65, 97), (12, 24, 36), True, 4),
    # the beta ResNet as the reference configures it with the decoder (multi-grid 1,2,4)
    Config('resnet_v1_101_beta_os16', 'resnet_v1_101_beta', 16, (129, 97), (6, 12, 18), False,
           4, multi_grid=(1, 2, 4)),
]
BY_NAME = {config.name: config for config in CONFIGS}


def check_checkout(models_research):
    """None, or one line saying what `--models-research` lacks."""
    for part in ('deeplab/model.py', 'deeplab/common.py', 'deeplab/core/feature_extractor.py',
                 'slim/nets/mobilenet/mobilenet_v2.py'):
        if not os.path.isfile(os.path.join(models_research, part)):
            return (f'--models-research {models_research}: no {part}; pass the research/ '
                    'folder of a tensorflow/models checkout (with deeplab/ and slim/ in it)')
    return None


def slim_import_error(slim_path):
    """None, or one line saying how to install tf_slim where `--slim-path` looks."""
    code = ('import sys, tf_keras.src.legacy_tf_layers as L; '
            'sys.modules["tf_keras.legacy_tf_layers"] = L; import tf_slim')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [slim_path, REPO])))
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                          text=True)
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ['?'])[-1]
    target = slim_path or '/tmp/slim'
    return (f'tf_slim is not importable ({last}): {sys.executable} -m pip install --no-deps '
            f'--target {target} -r {REQUIREMENTS}, then pass --slim-path {target}')


# ---- step a: the reference's graph (runs in a subprocess) ----

def _install_reference_imports(models_research):
    """Makes the checkout's `deeplab` and `nets` packages importable, with their
    `import tensorflow` seeing the TF1 API and `tensorflow.contrib` mapped onto tf_slim."""
    import builtins
    import functools
    import importlib.machinery
    import types

    import tf_keras.src.legacy_tf_layers as legacy_layers
    sys.modules['tf_keras.legacy_tf_layers'] = legacy_layers
    import tensorflow as real_tf
    v1 = real_tf.compat.v1
    v1.disable_v2_behavior()
    import tf_slim
    import tf_slim.nets.resnet_utils  # noqa: F401  (contrib.slim.nets.resnet_utils)

    tf1 = types.ModuleType('tensorflow')
    tf1.__getattr__ = functools.partial(getattr, v1)
    tf1.contrib = types.SimpleNamespace(slim=tf_slim, layers=tf_slim, framework=tf_slim)
    tf1.compat = types.SimpleNamespace(v1=tf1)

    def tf1_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == 'tensorflow' or name.startswith('tensorflow.')):
            if not fromlist:
                return tf1
            return functools.reduce(getattr, name.split('.')[1:], tf1)
        return builtins.__import__(name, globals, locals, fromlist, level)

    reference_builtins = dict(vars(builtins), __import__=tf1_import)
    roots = {'deeplab': [models_research], 'nets': [os.path.join(models_research, 'slim')]}

    class Loader(importlib.machinery.SourceFileLoader):
        def exec_module(self, module):
            module.__builtins__ = reference_builtins
            super().exec_module(module)

    class Finder:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            top = fullname.split('.')[0]
            if top not in roots:
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, path or roots[top])
            if spec is not None and spec.origin and spec.origin.endswith('.py'):
                spec.loader = Loader(fullname, spec.origin)
            return spec

    sys.meta_path.insert(0, Finder)
    return v1


def random_value(name, shape, rng):
    """A non-trivial value for a reference variable: He-scaled weights, batch-norm gammas near
    1, small betas and biases (moving statistics: `calibrated_statistics`)."""
    if name.endswith('gamma'):
        return rng.uniform(0.8, 1.2, shape)
    if name.endswith(('beta', 'biases')):
        return rng.normal(0.0, 0.1, shape)
    if name.endswith('weights'):
        fan_in = int(np.prod(shape[:2])) * (1 if name.endswith('depthwise_weights')
                                            else shape[2])
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    raise ValueError(f'no random value for the reference variable {name}')


def calibrated_statistics(batch_mean, batch_variance, rng):
    """Moving statistics near those of the image itself, so that with random weights every
    normalised activation stays O(1) through 100 layers instead of growing by orders of
    magnitude: the mean moved part of the way towards 0, the variance the mean square about
    it, times 0.7-1.4 (also positive where the batch variance is 0, as in image pooling)."""
    mean = batch_mean * rng.uniform(0.5, 1.0, batch_mean.shape)
    variance = batch_variance + np.square(batch_mean - mean)
    return mean, variance * rng.uniform(0.7, 1.4, batch_mean.shape) + 1e-3


def _reference_graph(tf, common, model, config, is_training):
    """(graph, images placeholder, predictions) of the reference's model.py."""
    height, width = config.size
    graph = tf.Graph()
    with graph.as_default():
        images = tf.placeholder(tf.float32, [1, height, width, 3])
        options = common.ModelOptions(
            outputs_to_num_classes={common.OUTPUT_TYPE: config.classes},
            crop_size=[height, width], atrous_rates=list(config.atrous_rates) or None,
            output_stride=config.output_stride)
        if is_training:
            # batch norm on the image's own statistics (train.py's fine_tune_batch_norm)
            outputs = model.multi_scale_logits(images, options, None, is_training=True,
                                               fine_tune_batch_norm=True)
        else:
            outputs = model.predict_labels(images, options, image_pyramid=None)
    return graph, images, outputs


def reference_step(config, models_research, out_dir):
    """Builds, initialises, saves and runs the reference's graph; writes out_dir/reference.npz
    and the checkpoint out_dir/model.ckpt-<STEP>."""
    tf = _install_reference_imports(models_research)
    from deeplab import common, model
    common.FLAGS(['reference'] + config.reference_flags())
    height, width = config.size
    rng = np.random.default_rng(SEED)
    image = rng.uniform(0.0, 255.0, (1, height, width, 3)).astype(np.float32)
    graph, images, predictions = _reference_graph(tf, common, model, config, False)
    with graph.as_default():
        step = tf.train.get_or_create_global_step()
        variables = tf.global_variables()
    values = {v.op.name: random_value(v.op.name, v.shape.as_list(), rng)
              for v in variables if v is not step and 'moving_' not in v.op.name}
    # The moving statistics, from one pass of the same network in training mode.
    train_graph, train_images, _ = _reference_graph(tf, common, model, config, True)
    with train_graph.as_default(), tf.Session() as session:
        norms = [op for op in train_graph.get_operations()
                 if op.type.startswith('FusedBatchNorm')]
        for variable in tf.global_variables():
            if variable.op.name in values:
                variable.load(values[variable.op.name], session)
            else:
                session.run(variable.initializer)
        batch = session.run({op.name.rsplit('/', 1)[0]: op.outputs[1:3] for op in norms},
                            {train_images: image})
    for scope, (mean, variance) in sorted(batch.items()):
        values[f'{scope}/moving_mean'], values[f'{scope}/moving_variance'] = \
            calibrated_statistics(mean, variance, rng)
    labels = predictions[common.OUTPUT_TYPE]
    upsampled = labels.op.inputs[0]  # argmax(resize_bilinear(merged logits))
    resize = upsampled.op
    while resize.type != 'ResizeBilinear':
        resize = resize.inputs[0].op
    logits = resize.inputs[0]
    with graph.as_default(), tf.Session() as session:
        for variable in variables:
            value = STEP if variable is step else values[variable.op.name]
            variable.load(np.asarray(value, variable.dtype.as_numpy_dtype), session)
        tf.train.Saver(variables).save(session, os.path.join(out_dir, 'model.ckpt'),
                                       global_step=STEP)
        fetched = session.run(
            {'logits': logits, 'upsampled': upsampled, 'labels': labels,
             'probabilities': predictions[common.OUTPUT_TYPE + model.PROB_SUFFIX]},
            {images: image})
    np.savez(os.path.join(out_dir, 'reference.npz'), image=image[0],
             **{key: value[0] for key, value in fetched.items()})
    print(f'{config.name}: reference graph of {len(variables)} variables, logits '
          f'{list(fetched["logits"].shape[1:3])}')


# ---- step b: this project's network on the same checkpoint and image ----

def project_step(config, out_dir):
    """The comparison of this project's prediction with the reference's, as a dict."""
    sys.path.insert(0, REPO)
    import tensorflow as tf
    from libs.evaluation.inference import MultiScalePredictor
    from libs.nets.deeplabv3 import upsample_logits
    from libs.runs.checkpoints import load_trained_model
    reference = dict(np.load(os.path.join(out_dir, 'reference.npz')))
    prefix = os.path.join(out_dir, f'model.ckpt-{STEP}')
    model, run_config, _, step = load_trained_model(
        prefix, output_stride=config.output_stride,
        reference=dict(dataset='voc', decoder_output_stride=config.decoder_output_stride),
        log=lambda line: None)
    image = model.preprocessing.normalize(tf.constant(reference['image']))
    logits = model(image[tf.newaxis], training=False, output_stride=config.output_stride)
    upsampled = upsample_logits(logits, list(config.size))[0].numpy()
    predictor = MultiScalePredictor(model, run_config.num_classes, config.output_stride)
    probabilities = predictor.predict_probabilities(image).numpy()
    labels = np.argmax(probabilities, axis=-1)
    scale = float(np.abs(reference['upsampled']).max())
    result = {
        'config': config.name, 'variant': config.variant,
        'output_stride': config.output_stride, 'size': list(config.size),
        'global_step': step,
        'max_abs_logits': float(np.abs(upsampled - reference['upsampled']).max()),
        'max_abs_logits_before_upsampling': float(
            np.abs(logits[0].numpy() - reference['logits']).max()),
        'max_abs_reference_logit': scale,
        'max_abs_probabilities': float(np.abs(probabilities
                                              - reference['probabilities']).max()),
        'argmax_agreement': float(np.mean(labels == reference['labels'])),
    }
    result['relative_logits'] = result['max_abs_logits'] / scale
    return result


def describe(result):
    return (f'{result["config"]:26s} {result["size"][0]}x{result["size"][1]}  max|dlogit| '
            f'{result["max_abs_logits"]:.2e} (before upsampling '
            f'{result["max_abs_logits_before_upsampling"]:.2e}; relative '
            f'{result["relative_logits"]:.1e})  max|dprob| '
            f'{result["max_abs_probabilities"]:.1e}  max|logit| '
            f'{result["max_abs_reference_logit"]:.1f}  argmax agrees '
            f'{100 * result["argmax_agreement"]:.2f}%')


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models-research', required=True,
                        help='the research/ folder of a tensorflow/models checkout')
    parser.add_argument('--slim-path', default=None,
                        help=f'where tf_slim and tf_keras are installed ({REQUIREMENTS})')
    parser.add_argument('--configs', default=','.join(BY_NAME),
                        help='comma-separated configurations (default: all)')
    parser.add_argument('--json', default=None, help='write the results here')
    parser.add_argument('--work-dir', default=None,
                        help='keep checkpoints and reference outputs here (default: temporary)')
    parser.add_argument('--reference-step', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_step:
        reference_step(BY_NAME[args.reference_step], os.path.abspath(args.models_research),
                       args.work_dir)
        return
    names = [name for name in args.configs.split(',') if name]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        sys.exit(f'--configs: unknown {", ".join(unknown)}; known: {", ".join(BY_NAME)}')
    problem = (check_checkout(os.path.abspath(args.models_research))
               or slim_import_error(args.slim_path))
    if problem:
        sys.exit(problem)
    results = []
    with tempfile.TemporaryDirectory(prefix='reference-agreement-') as temporary:
        for name in names:
            out_dir = os.path.join(args.work_dir or temporary, name)
            os.makedirs(out_dir, exist_ok=True)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                filter(None, [args.slim_path, os.environ.get('PYTHONPATH')])))
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), '--models-research',
                 args.models_research, '--reference-step', name, '--work-dir', out_dir],
                env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f'{name}: the reference graph failed:\n{done.stderr[-3000:]}')
            results.append(project_step(BY_NAME[name], out_dir))
            print(describe(results[-1]), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
            f.write('\n')


if __name__ == '__main__':
    main()
