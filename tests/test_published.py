"""The DeepLab family under the reference's names, and its published checkpoints.

Every published configuration's variable list (names and shapes) equals the one written from the
reference's code (`reference_networks.py`, kept in tests/fixtures); a checkpoint written under
those names loads with every tensor accounted for, and one with a missing, extra or misshapen
tensor is refused, naming it, with the model left unchanged."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import reference_networks
from libs.nets.deeplabv3 import DeepLabV3
from libs.nets.folding import FoldedDeepLabV3
from libs.runs import checkpoints, published
from test_pretrained import write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(reference_networks.FIXTURE) as f:
    FIXTURE = json.load(f)


def model_of(name, **overrides):
    variant, classes, branches, separable, decoder, multiplier = reference_networks.PUBLISHED[name]
    kwargs = dict(num_classes=classes, model_variant=variant, depth_multiplier=multiplier,
                  atrous_rates=(6, 12, 18)[:branches], aspp_separable=separable,
                  decoder_output_stride=4 if decoder else None, seed=0)
    kwargs.update(overrides)
    return DeepLabV3(**kwargs)


def variable_shapes(model):
    return {v.name.split(':')[0]: v.shape.as_list() for v in model.variables}


def test_the_reference_spec_is_the_fixture():
    """The fixture guards the spec: a change to either shows here (see reference_networks.py
    for how to write the fixture again)."""
    assert {name: reference_networks.published(name)
            for name in reference_networks.PUBLISHED} == FIXTURE
    # Sizes a reader can check against the networks' papers: MobileNetV2 up to layer_18 plus the
    # head ~2.1M parameters, Xception-65 + ASPP + decoder ~41M (moving statistics excluded).
    count = lambda tensors: sum(math.prod(shape) for name, shape in tensors.items()
                                if 'moving_' not in name)
    assert count(FIXTURE['mobilenetv2_coco_voc_trainaug']) == 2_113_557
    assert count(FIXTURE['xception65_coco_voc_trainaug']) == 41_055_413


# The networks are built in a process of their own: Xception-65 and the beta ResNets hold 40-60M
# parameters each, which the test process's allocator would keep after they are gone.
_BUILD_ALL = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']
from test_published import model_of, variable_shapes
from libs.runs import published
import reference_networks
print(json.dumps({name: {'variables': variable_shapes(model_of(name)),
                         'described': published.describe('<fixture>', dict(
                             reference_networks.published(name)))}
                  for name in reference_networks.PUBLISHED}, default=list))
"""


@pytest.fixture(scope='module')
def built():
    """{published name: {'variables': the model's {name: shape}, 'described': what
    `published.describe` reads from the reference's variable list}}."""
    done = subprocess.run([sys.executable, '-c', _BUILD_ALL, ROOT], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('name', sorted(reference_networks.PUBLISHED))
def test_variables_are_the_reference_names_and_shapes(name, built):
    assert built[name]['variables'] == FIXTURE[name]


def reference_values(name, seed=0, extras=True):
    """Seeded values of a whole reference checkpoint, with what the tarballs hold beside the
    network: the global step, momentum slots and moving-average copies."""
    rng = np.random.default_rng(seed)
    values = {}
    for tensor, shape in FIXTURE[name].items():
        value = rng.standard_normal(shape).astype(np.float32) * 0.1
        if tensor.endswith('moving_variance'):
            value = np.abs(value) + 0.5
        values[tensor] = value
    if extras:
        values['global_step'] = np.int64(30000)
        values['logits/semantic/weights/Momentum'] = values['logits/semantic/weights'] * 0
        values['aspp0/weights/ExponentialMovingAverage'] = values['aspp0/weights']
    return values


@pytest.fixture(scope='module')
def mobilenet_checkpoint(tmp_path_factory):
    values = reference_values('mobilenetv2_coco_voc_trainaug')
    return write_checkpoint(str(tmp_path_factory.mktemp('zoo') / 'model.ckpt-30000'), values,
                            v1=False), values


def test_reference_checkpoint_is_described_and_loaded_whole(mobilenet_checkpoint):
    prefix, values = mobilenet_checkpoint
    lines = []
    model, config, loaded_prefix, step = checkpoints.load_trained_model(prefix, log=lines.append)
    # The unpacked tarball's folder names it too: it holds one checkpoint and no state file.
    assert checkpoints.resolve_checkpoint(os.path.dirname(prefix)) == prefix
    assert (config.model_variant, config.atrous_rates, config.decoder_output_stride,
            config.num_classes, config.output_stride) == ('mobilenet_v2', (), None, 21, 16)
    assert config.class_names[15] == 'person' and step == 30000 and loaded_prefix == prefix
    for variable in model.variables:
        np.testing.assert_array_equal(variable.numpy(), values[variable.name.split(':')[0]])
    report = '\n'.join(lines)
    assert 'mobilenet_v2, ASPP without atrous branches, 21 classes (voc)' in report
    assert f'Loaded {len(FIXTURE["mobilenetv2_coco_voc_trainaug"])} mobilenet_v2 variables' \
        in report
    for left_out in ('*/Momentum (1)', '*/ExponentialMovingAverage (1)', 'global_step (1)'):
        assert left_out in report, report
    # It predicts: the folded network on a [-1, 1] image.
    image = model.preprocessing.normalize(np.full([1, 33, 40, 3], 200, np.uint8))
    assert FoldedDeepLabV3(model)(image).shape == (1, 3, 3, 21)


def _missing(values):
    del values['MobilenetV2/expanded_conv_16/project/weights']


def _extra(values):
    values['aspp1/weights'] = np.zeros([3, 3, 320, 256], np.float32)


def _misshapen(values):
    values['concat_projection/weights'] = np.zeros([1, 1, 768, 256], np.float32)


@pytest.mark.parametrize('mutate,message', [
    (_missing, r'lacks 1 of the model\'s 272 variables: '
               r'MobilenetV2/expanded_conv_16/project/weights$'),
    (_extra, r'has 1 tensors that are not its variables .*: aspp1/weights$'),
    (_misshapen, r'concat_projection/weights: checkpoint \[1, 1, 768, 256\] float32, '
                 r'model \[1, 1, 512, 256\] float32'),
])
def test_a_tensor_that_does_not_fit_is_refused_by_name(mutate, message, tmp_path):
    values = reference_values('mobilenetv2_coco_voc_trainaug', seed=1)
    mutate(values)
    prefix = write_checkpoint(str(tmp_path / 'model.ckpt-1'), values, v1=False)
    model = model_of('mobilenetv2_coco_voc_trainaug')
    before = {v.name: v.numpy().copy() for v in model.variables}
    with pytest.raises(ValueError, match=message):
        published.load_reference_weights(model, prefix)
    assert all(np.array_equal(v.numpy(), before[v.name]) for v in model.variables)


def test_what_the_checkpoint_does_not_tell_is_refused_naming_the_flag(tmp_path):
    values = reference_values('mobilenetv2_coco_voc_trainaug', extras=False)
    values['logits/semantic/weights'] = np.zeros([1, 1, 256, 7], np.float32)
    values['logits/semantic/biases'] = np.zeros([7], np.float32)
    prefix = write_checkpoint(str(tmp_path / 'model.ckpt-1'), values, v1=False)
    with pytest.raises(ValueError, match='has 7 classes, which is none of voc .21., cityscapes '
                                         r'.19., ade20k .151.: pass --dataset'):
        published.reference_config(prefix, log=lambda line: None)
    with pytest.raises(ValueError, match='has 7 classes, --dataset voc 21'):
        published.reference_config(prefix, dataset='voc', log=lambda line: None)


@pytest.mark.parametrize('name,expected', [
    ('xception65_coco_voc_trainaug', ('xception_65', (6, 12, 18), True, 4, 1.0)),
    ('mobilenetv2_dm05_coco_voc_trainaug', ('mobilenet_v2', (), False, None, 0.5)),
    ('mobilenetv2_ade20k_train', ('mobilenet_v2', (), False, 4, 1.0)),
    ('resnet_v1_50_beta_decoder', ('resnet_v1_50_beta', (6, 12, 18), False, 4, 1.0)),
])
def test_the_network_is_read_from_names_and_shapes(name, expected, built):
    found = built[name]['described']
    assert (found['model_variant'], tuple(found['atrous_rates']), found['aspp_separable'],
            found['decoder_output_stride'], found['depth_multiplier']) == expected


def test_ade20k_checkpoint_drops_the_ignored_logit(tmp_path):
    """The reference's ADE20K has 151 logits, the first for the pixels its evaluation ignores;
    this project's ADE20K records have 150 classes."""
    values = reference_values('mobilenetv2_ade20k_train', seed=2)
    prefix = write_checkpoint(str(tmp_path / 'model.ckpt-1'), values, v1=False)
    lines = []
    model, config, _, _ = checkpoints.load_trained_model(prefix, output_stride=8,
                                                         log=lines.append)
    assert config.num_classes == 150 and config.decoder_output_stride == 4
    assert config.output_stride == 8
    np.testing.assert_array_equal(model.classifier.bias.numpy(),
                                  values['logits/semantic/biases'][1:])
    np.testing.assert_array_equal(model.classifier.kernel.numpy(),
                                  values['logits/semantic/weights'][..., 1:])
    assert "its first logit, the pixels the reference ignores, left out" in '\n'.join(lines)


def script(name, *args, timeout=600):
    done = subprocess.run([sys.executable, f'{ROOT}/{name}', *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, f'{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}'
    return done.stdout + done.stderr


@pytest.mark.slow
def test_xception_v3_plus_trains_resumes_evaluates_and_exports(trained_run, tmp_path):
    """A variant of the family through the scripts as a user runs them: Xception-65 with the
    decoder (its default head) trains, resumes, evaluates at OS 8 with flips and exports."""
    run, metrics, export = tmp_path / 'run', tmp_path / 'val.json', tmp_path / 'saved'
    flags = ['--data-dir', trained_run.data_dir, '--split-name', 'train', '--model-variant',
             'xception_65', '--batch-size', '2', '--input-size', '33', '--save-pred-every', '1',
             '--snapshot-dir', run]
    script('train.py', *flags, '--num-steps', '1')
    with open(run / 'config.json') as f:
        recorded = json.load(f)
    assert (recorded['model_variant'], recorded['decoder_output_stride'],
            recorded['atrous_rates'], recorded['aspp_separable'], recorded['multi_grid'],
            recorded['aspp_pooling_first']) == ('xception_65', 4, [6, 12, 18], True,
                                                [1, 1, 1], True)
    assert 'Resuming from' in script('train.py', *flags, '--num-steps', '2')
    script('evaluate.py', '--restore-from', run, '--data-dir', trained_run.data_dir,
           '--output-stride', '8', '--flip', '--output-json', metrics)
    with open(metrics) as f:
        report = json.load(f)
    assert report['global_step'] == 2 and report['num_images'] == 3
    assert report['output_stride'] == 8 and 0.0 <= report['miou'] <= 1.0
    script('export.py', '--restore-from', run, '--output-dir', export)
    assert (export / 'saved_model.pb').is_file()


@pytest.mark.slow
def test_a_published_checkpoint_evaluates_predicts_exports_and_fine_tunes(
        trained_run, mobilenet_checkpoint, tmp_path):
    """A MobileNetV2 checkpoint of the reference's model zoo (its names, seeded values) with no
    run folder: evaluated on records, predicted on a photo with its classes from --dataset,
    exported as int8 TFLite, and fine-tuned into a run of 3 classes."""
    from PIL import Image
    prefix, _ = mobilenet_checkpoint
    out = script('evaluate.py', '--restore-from', prefix, '--data-dir', trained_run.data_dir,
                 '--output-json', tmp_path / 'val.json')
    assert 'the reference DeepLab\'s mobilenet_v2, ASPP without atrous branches' in out
    with open(tmp_path / 'val.json') as f:
        assert json.load(f)['global_step'] == 30000
    photo = tmp_path / 'photo.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(photo)
    script('predict.py', '--restore-from', prefix, '--dataset', 'voc', '--input', photo,
           '--output-dir', tmp_path / 'predicted')
    with Image.open(tmp_path / 'predicted' / 'photo.png') as png:
        assert png.size == (50, 40) and np.asarray(png).max() < 21
    script('export.py', '--restore-from', prefix, '--format', 'tflite', '--quantize', 'int8',
           '--canvas-size', '65', '--data-dir', trained_run.data_dir, '--calibration-split',
           'val', '--output-dir', tmp_path / 'int8')
    assert (tmp_path / 'int8' / 'model.tflite').is_file()
    out = script('train.py', '--restore-from', prefix, '--data-dir', trained_run.data_dir,
                 '--split-name', 'train', '--num-classes', '21', '--batch-size', '2',
                 '--input-size', '33', '--num-steps', '1', '--save-pred-every', '1',
                 '--snapshot-dir', tmp_path / 'tuned')
    assert 'Loaded 272 mobilenet_v2 variables' in out, out
    with open(tmp_path / 'tuned' / 'config.json') as f:
        assert json.load(f)['model_variant'] == 'mobilenet_v2'


def slim_mobilenet_v2_050():
    """TF-slim's `mobilenet_v2_0.5_224` backbone up to layer_18: its depths rounded to multiples
    of 8 (mobilenet.py's `depth_multiplier` defaults, divisible_by=8), so 16 channels where the
    reference DeepLab's x0.5 network (divisible_by=1) has 12."""
    assert reference_networks.mobilenet_v2(0.5)[0][
        'MobilenetV2/expanded_conv_1/project/weights'][-1] == 12
    tensors, _, _ = reference_networks.mobilenet_v2(0.5, divisible=8)
    assert tensors['MobilenetV2/expanded_conv_1/project/weights'][-1] == 16
    return tensors


def test_slim_imagenet_mobilenet_at_half_depth_loads_with_its_rounding(tmp_path):
    """`--imagenet mobilenet_v2_0.5_224.ckpt --depth-multiplier 0.5`: the network is built with
    that file's rounding of the depths, and the file loads whole."""
    import config as config_lib
    from libs.nets.pretrained import load_slim_backbone
    tensors = slim_mobilenet_v2_050()
    rng = np.random.default_rng(3)
    values = {n: rng.standard_normal(s).astype(np.float32) for n, s in tensors.items()}
    values['MobilenetV2/Logits/Conv2d_1c_1x1/weights'] = np.zeros([1, 1, 1280, 1001], np.float32)
    values['MobilenetV2/Conv_1/weights'] = np.zeros([1, 1, 160, 1280], np.float32)
    path = write_checkpoint(str(tmp_path / 'mobilenet_v2_0.5_224.ckpt'), values, v1=False)
    parser = config_lib.build_train_parser('train.py')
    args = config_lib.parse_train_args(parser, [
        '--model-variant', 'mobilenet_v2', '--depth-multiplier', '0.5', '--imagenet', path,
        '--snapshot-dir', str(tmp_path / 'run')])
    assert args.depth_divisor == 8
    config = config_lib.config_from_args(args, num_classes=21)
    model = checkpoints.build_model(config)
    report = load_slim_backbone(model.backbone, path, scope=model.variant.scope,
                                classifier=dict(model.variant.imagenet_left_out))
    assert report.loaded == len(model.backbone.variables) == len(tensors)
    assert {group.pattern for group in report.left_out} == {'MobilenetV2/Logits/*',
                                                            'MobilenetV2/Conv_1/*'}
    # The reference's own x0.5 network keeps its exact halves.
    assert config_lib.resolve_network(dataclasses.replace(
        config, depth_divisor=None)).depth_divisor == 1


def test_a_run_recorded_before_the_variants_keeps_its_aspp_order(trained_run, tmp_path):
    """config.json of a run written before the variant registry has no network fields beyond
    num_layers and multi_grid: it is the slim ResNet with the paper's ASPP, image pooling
    concatenated last, and loads (and resumes) so."""
    import shutil
    import config as config_lib
    from libs.runs import record
    run = tmp_path / 'old_run'
    shutil.copytree(trained_run.run_dir, run)
    with open(run / 'config.json') as f:
        values = json.load(f)
    new_fields = ('model_variant', 'depth_multiplier', 'depth_divisor', 'atrous_rates',
                  'aspp_separable', 'decoder_output_stride', 'aspp_pooling_first', 'keep_best')
    assert values['aspp_pooling_first'] is True  # the situation: this run was recorded now
    with open(run / 'config.json', 'w') as f:
        json.dump({k: v for k, v in values.items() if k not in new_fields}, f)
    model, config, _, _ = checkpoints.load_trained_model(str(run))
    assert (config.model_variant, config.atrous_rates, config.aspp_pooling_first) == (
        'resnet_v1_50', (6, 12, 18), False)
    assert model.aspp.pooling_first is False
    # The same weights in the other order give other logits: the order is not cosmetic.
    image = tf.random.stateless_normal([1, 33, 33, 3], seed=[1, 1]) * 50.0
    other = DeepLabV3(num_classes=21, depth=50, aspp_pooling_first=True)
    for mine, theirs in zip(model.variables, other.variables):
        theirs.assign(mine)
    assert not np.allclose(model(image).numpy(), other(image).numpy(), atol=1e-3)
    # A resume keeps the recorded order whatever the flags say.
    resumed = record.with_recorded_layout(dataclasses.replace(config, snapshot_dir=str(run),
                                                              aspp_pooling_first=True))
    assert resumed.aspp_pooling_first is False


def test_fine_tuning_to_other_classes_loads_all_but_the_classifier(mobilenet_checkpoint):
    prefix, values = mobilenet_checkpoint
    model = model_of('mobilenetv2_coco_voc_trainaug', num_classes=3)
    fresh = model.classifier.kernel.numpy().copy()
    report = published.load_reference_weights(model, prefix, other_classes=True)
    classifier = {v.ref() for v in model.classifier.variables}
    for variable in model.variables:
        if variable.ref() not in classifier:
            np.testing.assert_array_equal(variable.numpy(), values[variable.name[:-2]])
    np.testing.assert_array_equal(model.classifier.kernel.numpy(), fresh)
    assert report.loaded == len(model.variables) - 2
    assert 'logits/semantic/* (2): the classifier of 21 classes; the model has 3' in \
        report.summary()


@pytest.mark.parametrize('flags,named', [
    (['--num-layers', '50', '--model-variant', 'xception_65'], '--num-layers 50 contradicts'),
    (['--model-variant', 'mobilenet_v2', '--decoder-output-stride', '16'],
     '--decoder-output-stride 16 must be below --output-stride 16'),
    (['--model-variant', 'xception_65', '--multi-grid', '1,2'], 'xception_65 takes 3 rates'),
    (['--model-variant', 'mobilenet_v2', '--depth-multiplier', '0.6'],
     '--depth-multiplier 0.6: mobilenet_v2 takes'),
])
def test_a_network_the_variant_cannot_be_is_one_line(flags, named, tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--snapshot-dir',
                           str(tmp_path / 'run'), *flags], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith('train.py: error: ') and named in last, last
    assert not (tmp_path / 'run').exists()


def test_an_ambiguous_decoder_end_point_needs_the_flag():
    """Xception-65's end points at output strides 8 and 16 both have 728 channels: a decoder
    projecting 728 could take either, and --decoder-output-stride decides."""
    found = {'decoder_strides': (8, 16), 'decoder_output_stride': None}
    with pytest.raises(ValueError, match='fits the end points at output strides 8, 16: pass '
                                         '--decoder-output-stride'):
        published.check_decoder_output_stride('ckpt', found, None)
    assert published.check_decoder_output_stride('ckpt', found, 16) == 16
    with pytest.raises(ValueError, match='--decoder-output-stride 4: the decoder of ckpt takes '
                                         'the end point at output stride 8 or 16'):
        published.check_decoder_output_stride('ckpt', found, 4)
    assert published.check_decoder_output_stride(
        'ckpt', {'decoder_strides': (4,), 'decoder_output_stride': 4}, None) == 4
