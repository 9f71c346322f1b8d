"""Cityscapes' own pixel-level evaluation (cityscapesscripts' evalPixelLevelSemanticLabeling)
on prediction PNGs of label ids, as the benchmark server scores them.

The script finds the prediction of ground truth `<city>_<seq>_<frame>_gtFine_labelIds.png` as
the one file matching `<city>_<seq>_<frame>*.png` under the predictions folder; evaluate.py's
`<image_id>.png` and predict.py's `<city>_<seq>_<frame>_leftImg8bit.png` both match. Its class
IoU leaves out the ground truth's `ignoreInEval` pixels as this project leaves out 255, so on
the same pixels its mIoU is this project's. The instance-weighted iIoU needs the
`*_instanceIds.png` files and is not computed.
"""
import copy
import os

from libs.datasets import cityscapes


def ground_truth_files(cityscapes_dir, split_name, image_ids):
    """`<cityscapes_dir>/gtFine/<split>/<city>/<image_id>_gtFine_labelIds.png` of each id.

    Raises:
        FileNotFoundError: naming the first missing file.
    """
    files = []
    for image_id in image_ids:
        city = image_id.rsplit('_', 2)[0]
        path = os.path.join(cityscapes_dir, cityscapes.LABEL_DIR, split_name, city,
                            image_id + cityscapes.LABEL_SUFFIX)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path} not found: the Cityscapes folder does not hold '
                                    f'the ground truth of {image_id}')
        files.append(path)
    return files


def official_evaluation(predictions_dir, cityscapes_dir, split_name, image_ids):
    """Runs cityscapesscripts' pixel-level evaluation of `image_ids`.

    Args:
        predictions_dir: folder of label-id PNGs, one per image (searched recursively).
        cityscapes_dir: the folder holding gtFine/.
        split_name: the gtFine subfolder, e.g. val.
        image_ids: `<city>_<seq>_<frame>` of the images to score.
    Returns:
        dict with `miou` (the script's `averageScoreClasses`) and `per_class_iou` (by class
        name, None where undefined).
    Raises:
        FileNotFoundError: a ground-truth file is missing.
        ValueError: the script refused (it prints its reason and exits; the exit is caught).
    """
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    gt_files = ground_truth_files(cityscapes_dir, split_name, image_ids)
    args = copy.copy(official.args)  # the script keeps its settings in one module object
    args.predictionPath, args.predictionWalk = os.path.abspath(predictions_dir), None
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized, args.bold, args.nocol = False, '', ''
    try:
        predictions = [official.getPrediction(args, gt) for gt in gt_files]
        result = official.evaluateImgLists(predictions, gt_files, args)
    except SystemExit:
        raise ValueError('cityscapesscripts refused the predictions in '
                         f'{predictions_dir} (its reason is printed above)') from None
    scores = {name: (None if value != value else float(value))
              for name, value in result['classScores'].items()}
    return {'miou': float(result['averageScoreClasses']),
            'per_class_iou': {name: scores[name] for name in cityscapes.dataset().class_names}}
