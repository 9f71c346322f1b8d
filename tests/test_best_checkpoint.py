"""--keep-best: the checkpoint of the best val mIoU kept in <snapshot-dir>/best/, on a real tiny
run, evaluated from there, and kept across resumes."""
import dataclasses
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import config as config_lib
import evaluate
from libs.training.best_checkpoint import read_best
from libs.training.loop import train


def _val_mious(lines):
    return {int(m.group(1)): float(m.group(2)) for m in
            (re.match(r'step (\d+)  val mIoU ([\d.]+) over', line) for line in lines) if m}


def _set_recorded_miou(best_dir, miou):
    path = os.path.join(best_dir, 'best.json')
    with open(path) as f:
        record = json.load(f)
    record['miou'] = miou
    with open(path, 'w') as f:
        json.dump(record, f)


def _scalars(run_dir, prefix):
    """{step: {tag: value}} of the TensorBoard scalars whose tag starts with `prefix`."""
    found = {}
    folder = os.path.join(run_dir, 'train')
    for name in os.listdir(folder):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                if value.tag.startswith(prefix):
                    found.setdefault(event.step, {})[value.tag] = float(
                        tf.make_ndarray(value.tensor))
    return found


def test_keep_best_without_val_split_is_refused(capsys):
    parser = config_lib.build_train_parser('train\n')
    with pytest.raises(SystemExit):
        config_lib.parse_train_args(parser, ['--keep-best', '--snapshot-dir', 'x'])
    assert '--keep-best needs --val-split' in capsys.readouterr().err


@pytest.mark.slow
def test_best_checkpoint_is_kept_evaluated_and_survives_resumes(trained_run, tmp_path, capsys):
    run_dir = str(tmp_path / 'run')
    best_dir = os.path.join(run_dir, 'best')
    config = config_lib.TrainConfig(
        data_dir=trained_run.data_dir, split_name='train', val_split='val', keep_best=True,
        num_layers=50, batch_size=2, input_size=65, num_steps=3, save_pred_every=1,
        max_to_keep=1, log_every=1, learning_rate=0.05, snapshot_dir=run_dir, bn_decay=0.9)
    lines = []
    train(config, log=lines.append)
    mious = _val_mious(lines)
    assert sorted(mious) == [1, 2, 3]
    best_step = max(mious, key=lambda s: (mious[s], -s))  # ties keep the earlier one
    record = read_best(run_dir)
    assert record['step'] == best_step and record['val_split'] == 'val'
    assert record['miou'] == pytest.approx(mious[best_step], abs=5e-5)
    assert sorted(os.listdir(best_dir)) == sorted([
        'best.json', 'checkpoint', 'config.json', f'model-{best_step}.index',
        f'model-{best_step}.data-00000-of-00001'])
    assert not [n for n in os.listdir(run_dir) if n.startswith('best.')]
    # TensorBoard has each validation's per-class IoU; their mean is the logged mIoU.
    per_class = _scalars(run_dir, 'val_iou/')
    assert sorted(per_class) == [1, 2, 3]
    for step, ious in per_class.items():
        assert set(ious) <= {f'val_iou/{name}' for name in config_lib.load_run_config(
            run_dir).class_names}
        assert np.mean(list(ious.values())) == pytest.approx(mious[step], abs=5e-5)

    # best/ is a run folder of its own for evaluate.py.
    out = str(tmp_path / 'best_val.json')
    assert evaluate.main(['--restore-from', best_dir, '--data-dir', trained_run.data_dir,
                          '--split-name', 'val', '--output-json', out]) == 0
    with open(out) as f:
        report = json.load(f)
    assert report['global_step'] == best_step
    printed = capsys.readouterr().out
    assert 'most confused (true -> predicted' in printed
    for pair in report['most_confused']:
        assert f'{pair["true"]} -> {pair["predicted"]}' in printed
    assert set(report['per_class_recall']) == set(report['class_names'])
    # Validation runs the unfolded network, evaluate.py the folded one: rounding only.
    assert report['miou'] == pytest.approx(record['miou'], abs=1e-3)

    # A resume reads the record: a record worse than anything replaces it...
    _set_recorded_miou(best_dir, -1.0)
    # ... also when a run was killed between the two renames of a replacement.
    os.rename(best_dir, os.path.join(run_dir, 'best.old-999'))
    os.makedirs(os.path.join(run_dir, 'best.tmp-998'))
    lines = []
    train(dataclasses.replace(config, num_steps=4), log=lines.append)
    assert any(line.startswith(f'Restored {best_dir}') for line in lines)
    assert read_best(run_dir)['step'] == 4
    assert sorted(n for n in os.listdir(run_dir) if n.startswith('best')) == ['best']

    # ... and a better record (here an impossible 2.0) is never replaced by a worse mIoU.
    _set_recorded_miou(best_dir, 2.0)
    lines = []
    train(dataclasses.replace(config, num_steps=5), log=lines.append)
    assert 5 in _val_mious(lines)
    assert read_best(run_dir) == dict(record, step=4, miou=2.0, checkpoint='model-4',
                                      val_images=3)
    assert os.path.isfile(os.path.join(best_dir, 'model-4.index'))

    # A resume validating on other images cannot compare with the record: it starts again.
    lines = []
    train(dataclasses.replace(config, num_steps=6, val_max_images=2), log=lines.append)
    assert any(line.endswith('the record starts again') for line in lines)
    assert read_best(run_dir)['step'] == 6 and read_best(run_dir)['val_images'] == 2
