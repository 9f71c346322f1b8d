"""Cityscapes results as the benchmark takes them: label-id PNGs named after the images, scored
by cityscapesscripts' own evaluation, which must agree with evaluate.py's mIoU."""
import glob
import json
import os

import numpy as np
import pytest
from cityscapesscripts.helpers import labels as cityscapes_labels
from PIL import Image

import evaluate
import predict
from config import TrainConfig
from libs.datasets import cityscapes, sample
from libs.evaluation import cityscapes_eval
from libs.training.loop import train


@pytest.mark.slow
def test_label_id_predictions_scored_by_cityscapesscripts_agree(tmp_path, capsys):
    cs_dir, records, run_dir = (str(tmp_path / name) for name in ('cs', 'records', 'run'))
    sample.write_sample_dataset(cs_dir, num_train=2, num_val=3, size_range=(65, 81), seed=1,
                                layout='cityscapes')
    for split in ('train', 'val'):
        cityscapes.convert_split(cs_dir, split, records, num_workers=1, progress=False)
    train(TrainConfig(data_dir=records, split_name='train', num_layers=50, batch_size=1,
                      input_size=65, num_steps=1, save_pred_every=1, snapshot_dir=run_dir),
          log=lambda _: None)
    capsys.readouterr()

    saved, out = str(tmp_path / 'saved'), str(tmp_path / 'val.json')
    assert evaluate.main(['--restore-from', run_dir, '--data-dir', records, '--split-name', 'val',
                          '--cityscapes-eval', cs_dir, '--save-predictions', saved,
                          '--output-json', out]) == 0
    printed = capsys.readouterr().out
    with open(out) as f:
        report = json.load(f)
    official = report['cityscapes_official']
    assert official['miou'] == pytest.approx(report['miou'], abs=1e-12)
    for name, iou in report['per_class_iou'].items():
        assert official['per_class_iou'][name] == (None if iou is None else pytest.approx(iou))
    assert (f"Cityscapes' own evaluation (cityscapesscripts) of the 3 label-id PNGs: mIoU "
            f"{100 * official['miou']:.2f}; this evaluation: {100 * report['miou']:.2f}\n"
            in printed)
    # Label ids, not train ids: each value is the id of a class with a train id.
    train_label_ids = {label.id for label in cityscapes_labels.labels
                       if 0 <= label.trainId < 255}
    ids = sorted(os.path.basename(p)[:-len(cityscapes.IMAGE_SUFFIX)] for p in glob.glob(
        os.path.join(cs_dir, 'leftImg8bit', 'val', '*', '*' + cityscapes.IMAGE_SUFFIX)))
    assert sorted(os.listdir(saved)) == [f'{image_id}.png' for image_id in ids]
    for image_id in ids:
        with Image.open(os.path.join(saved, f'{image_id}.png')) as png:
            assert png.mode == 'L'
            assert set(np.unique(np.asarray(png)).tolist()) <= train_label_ids

    # predict.py on the images themselves: the files a submission zips, the same label maps.
    submission = str(tmp_path / 'submission')
    assert predict.main(['--restore-from', run_dir, '--output-dir', submission,
                         '--label-ids', 'cityscapes', '--input',
                         os.path.join(cs_dir, 'leftImg8bit', 'val', '*', '*.png')]) == 0
    assert sorted(os.listdir(submission)) == [f'{i}{cityscapes.IMAGE_SUFFIX}' for i in ids]
    for image_id in ids:
        np.testing.assert_array_equal(
            np.asarray(Image.open(os.path.join(submission, image_id + cityscapes.IMAGE_SUFFIX))),
            np.asarray(Image.open(os.path.join(saved, f'{image_id}.png'))))
    assert cityscapes_eval.official_evaluation(submission, cs_dir, 'val', ids)['miou'] == (
        pytest.approx(report['miou'], abs=1e-12))


def test_label_ids_of_another_dataset_are_refused(trained_run, tmp_path, capsys):
    for main, flags in ((predict.main, ['--input', trained_run.voc_dir, '--output-dir',
                                        str(tmp_path / 'out')]),
                        (evaluate.main, ['--data-dir', trained_run.data_dir,
                                         '--save-predictions', str(tmp_path / 'out')])):
        with pytest.raises(SystemExit):
            main(['--restore-from', trained_run.run_dir, '--label-ids', 'cityscapes', *flags])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.endswith("error: --label-ids cityscapes: the run's 21 classes (background, "
                              "aeroplane, bicycle, ...) are not Cityscapes' 19 train-id classes: "
                              'it was trained on another dataset')
    assert not os.path.exists(tmp_path / 'out')
