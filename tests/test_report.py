"""evaluate.py --report: figures of the expected size, example images, and a page linking them."""
import json
import os
import re

import numpy as np
from PIL import Image

import evaluate
from libs.evaluation import report


def test_evaluate_writes_a_report(trained_run, tmp_path):
    report_dir = tmp_path / 'report'
    assert evaluate.main(['--restore-from', trained_run.run_dir, '--data-dir',
                          trained_run.data_dir, '--split-name', 'val', '--report',
                          str(report_dir), '--output-json', str(tmp_path / 'val.json')]) == 0
    with open(tmp_path / 'val.json') as f:
        confusion = np.array(json.load(f)['confusion_matrix'])
    # Classes in the ground truth or the predictions, counted here from the JSON's matrix.
    num_shown = int(np.count_nonzero(confusion.sum(axis=0) + confusion.sum(axis=1)))
    assert num_shown >= 2
    with Image.open(report_dir / report.CONFUSION_FILE) as image:
        assert image.format == 'PNG'
        width, height = image.size
        # Legible: at least 30 pixels a row of the heat map, at least 400 pixels in all, and
        # wider than high (the colour bar is beside it).
        assert height >= max(400, 30 * num_shown) and width > height, image.size
        assert len(np.unique(np.asarray(image.convert('L')))) > 10  # axes, labels, colours
    with Image.open(report_dir / report.IOU_FILE) as image:
        assert image.format == 'PNG'
        width, height = image.size
        # One bar of at least 30 pixels for each of the run's classes, all 21 of VOC.
        assert len(confusion) == 21 and width >= 30 * 21 and height >= 300, image.size
        assert len(np.unique(np.asarray(image.convert('L')))) > 10

    page = (report_dir / report.INDEX_FILE).read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert report.CONFUSION_FILE in sources and report.IOU_FILE in sources
    examples = [s for s in sources if s.startswith(report.EXAMPLES_DIR + '/')]
    # 3 val images: the worst 2 and the best 1, each image, ground truth and prediction.
    assert len(examples) == 9 and len(set(examples)) == 9
    for k in range(0, len(examples), 3):
        sizes = set()
        for source in examples[k:k + 3]:
            assert os.path.getsize(report_dir / source) > 0
            with Image.open(report_dir / source) as image:
                sizes.add(image.size)
        assert len(sizes) == 1  # image, ground truth and prediction line up


def test_image_scores_rank_images_and_never_show_one_twice():
    scores = report.ImageScores(num_classes=3, num_examples=2)
    label = np.array([[0, 1], [2, 255]])
    image = np.zeros((2, 2, 3), np.float32)
    wrong = {'a': 0, 'b': 1, 'c': 2, 'd': 3}  # number of wrong pixels out of 3 scored
    for image_id, errors in wrong.items():
        prediction = label.copy()
        prediction[prediction == 255] = 0
        flat = prediction.reshape(-1)
        flat[:errors] = (flat[:errors] + 1) % 3
        scores(image_id, image, label, prediction)
    scores('all ignored', image, np.full((2, 2), 255), np.zeros((2, 2), int))
    assert [r.image_id for r in scores.worst()] == ['d', 'c']
    assert [r.image_id for r in scores.best()] == ['a', 'b']
    assert scores.best()[0].miou == 1.0 and scores.num_ranked == 4
    assert len(scores.results) == 5

    few = report.ImageScores(num_classes=3, num_examples=2)
    for image_id in ('x', 'y', 'z'):
        few(image_id, image, label, np.zeros((2, 2), int))  # equal scores
    assert [r.image_id for r in few.worst()] == ['z', 'y']
    assert [r.image_id for r in few.best()] == ['x']
