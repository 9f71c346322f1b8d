"""An evaluation report to look at: confusion matrix, per-class IoU, the worst and best images.

`write_report` writes into one folder:
    confusion_matrix.png  row-normalised confusion matrix (row = ground truth), as a heat map;
    per_class_iou.png     per-class IoU bars, with the mIoU as a line;
    examples/             image, ground truth and prediction of the worst and best images;
    index.html            the page that shows them all.

Per-image scores rank the images only; the headline mIoU stays the one of the split's single
confusion matrix (DESIGN.md, "VOC conventions"). Figures are drawn with matplotlib's Agg canvas
(`matplotlib.figure.Figure`, no pyplot), so no display and no global backend are needed.
"""
import dataclasses
import heapq
import html
import itertools
import os

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from libs.utils.preprocessing import IMAGENET_MEAN
from libs.evaluation import metrics
from libs.utils import image_io, visualize

CONFUSION_FILE = 'confusion_matrix.png'
IOU_FILE = 'per_class_iou.png'
EXAMPLES_DIR = 'examples'
INDEX_FILE = 'index.html'
DPI = 100


@dataclasses.dataclass
class ImageResult:
    """One image's scores, and its pixels when it is among the kept examples."""
    image_id: str
    miou: float
    pixel_accuracy: float
    image: np.ndarray = None       # uint8 [H, W, 3]
    label: np.ndarray = None       # uint8 [H, W], 255 ignored
    prediction: np.ndarray = None  # uint8 [H, W]


class ImageScores:
    """Scores every image and keeps the few worst and best ones; an `on_prediction` callback.

    Images are ranked by their own mIoU (over the classes in their ground truth or prediction,
    ignored pixels excluded), ties broken by pixel accuracy. Images with no scored pixel are
    counted but not ranked.

    Args:
        num_classes: C.
        ignore_label: label value excluded from the scores.
        num_examples: how many worst and how many best images to keep.
    """

    def __init__(self, num_classes, ignore_label=255, num_examples=4,
                 preprocessing=IMAGENET_MEAN):
        self.preprocessing = preprocessing  # how the images it is given were normalised
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.num_examples = num_examples
        self.results = []  # ImageResult without pixels, in dataset order
        self._worst = []   # (negated key, ImageResult): min-heap that drops the best
        self._best = []    # (key, ImageResult): min-heap that drops the worst
        self._order = itertools.count()

    def __call__(self, image_id, image, label, prediction):
        """Scores one image.

        Args:
            image_id: str.
            image: float32 [H, W, 3], normalized (`input_pipeline.normalize`).
            label: int [H, W], `ignore_label` ignored.
            prediction: int [H, W].
        """
        scores = metrics.iou_from_confusion(metrics.confusion_matrix(
            label, prediction, self.num_classes, self.ignore_label).numpy())
        self.results.append(ImageResult(image_id, scores['miou'], scores['pixel_accuracy']))
        if np.isnan(scores['miou']):
            return
        example = ImageResult(
            image_id, scores['miou'], scores['pixel_accuracy'],
            self.preprocessing.denormalize(image),
            np.asarray(label).astype(np.uint8), np.asarray(prediction).astype(np.uint8))
        # A total order (among equal scores the earlier image ranks higher), so that worst and
        # best never disagree about two images.
        key = (example.miou, example.pixel_accuracy, -next(self._order))
        self._keep(self._worst, (tuple(-k for k in key), example))
        self._keep(self._best, (key, example))

    def _keep(self, heap, item):
        """Pushes onto a min-heap of at most `num_examples` items, dropping the smallest."""
        if len(heap) < self.num_examples:
            heapq.heappush(heap, item)
        else:
            heapq.heappushpop(heap, item)

    @property
    def num_ranked(self):
        return sum(1 for r in self.results if not np.isnan(r.miou))

    def worst(self):
        """The kept worst images, worst first (list of `ImageResult`).

        With fewer than 2 * num_examples ranked images, worst and best share them out (the
        lower half here) instead of showing the same images twice.
        """
        count = min(self.num_examples, (self.num_ranked + 1) // 2)
        return [e for _, e in sorted(self._worst, key=lambda t: t[0], reverse=True)][:count]

    def best(self):
        """The kept best images, best first (list of `ImageResult`); see `worst`."""
        count = min(self.num_examples, self.num_ranked // 2)
        return [e for _, e in sorted(self._best, key=lambda t: t[0], reverse=True)][:count]


def shown_classes(confusion):
    """Classes drawn in the confusion matrix: those in the ground truth or the predictions.

    A class in neither has an undefined IoU (absent from the mIoU too) and an all-zero row and
    column, so it is left out of the heat map. A class only predicted (no ground truth) is shown,
    its row blank ("no ground truth").
    """
    confusion = np.asarray(confusion)
    return np.flatnonzero((confusion.sum(axis=0) + confusion.sum(axis=1)) > 0)


def confusion_figure_size(num_shown):
    """(width, height) in inches of the confusion matrix figure of `num_shown` classes."""
    size = max(4.0, 0.45 * num_shown + 2.5)
    return size + 1.0, size


def iou_figure_size(num_classes):
    """(width, height) in inches of the per-class IoU figure."""
    return max(6.0, 0.4 * num_classes + 1.5), 4.5


def plot_confusion_matrix(path, confusion, class_names):
    """Writes the row-normalised confusion matrix as a heat map PNG.

    Args:
        path: the PNG to write.
        confusion: [C, C] counts, rows ground truth, columns predictions.
        class_names: C names.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    keep = shown_classes(confusion)
    if keep.size == 0:
        keep = np.arange(len(class_names))
    sub = confusion[np.ix_(keep, keep)]
    totals = sub.sum(axis=1, keepdims=True)
    with np.errstate(invalid='ignore', divide='ignore'):
        normalised = np.where(totals > 0, sub / totals, np.nan)
    names = [class_names[i] for i in keep]
    figure = Figure(figsize=confusion_figure_size(len(keep)), dpi=DPI)
    axes = figure.add_subplot()
    cmap = colormaps['Blues'].with_extremes(bad='#dddddd')  # rows with no ground truth
    im = axes.imshow(np.ma.masked_invalid(normalised), cmap=cmap, vmin=0.0, vmax=1.0)
    figure.colorbar(im, ax=axes, fraction=0.046, pad=0.04, label='fraction of the row')
    axes.set_xticks(range(len(names)), names, rotation=90)
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel('prediction')
    axes.set_ylabel('ground truth')
    axes.set_title('Confusion matrix, normalised by row')
    if len(keep) <= 25:
        for i, j in np.ndindex(normalised.shape):
            value = normalised[i, j]
            if not np.isnan(value) and value >= 0.005:
                axes.text(j, i, f'{100 * value:.0f}', ha='center', va='center', fontsize=7,
                          color='white' if value > 0.5 else 'black')
    _save_figure(figure, path)


def plot_per_class_iou(path, per_class_iou, class_names, miou=None, class_colors=None):
    """Writes a bar chart PNG of per-class IoU (%); classes with an undefined IoU read "n/a".

    Args:
        path: the PNG to write.
        per_class_iou: C floats, None or NaN where undefined.
        class_names: C names.
        miou: drawn as a dashed line, if given.
        class_colors: the bars' colours, (r, g, b) by class index; None for VOC's.
    """
    values = np.array([np.nan if v is None else v for v in per_class_iou], dtype=np.float64)
    figure = Figure(figsize=iou_figure_size(len(values)), dpi=DPI)
    axes = figure.add_subplot()
    positions = np.arange(len(values))
    colours = visualize.full_palette(class_colors)[:len(values)] / 255.0
    axes.bar(positions, np.nan_to_num(100 * values), color=colours, edgecolor='black',
             linewidth=0.5)
    for x, value in zip(positions, values):
        axes.text(x, 1 if np.isnan(value) else 100 * value + 1,
                  'n/a' if np.isnan(value) else f'{100 * value:.0f}', ha='center',
                  va='bottom', fontsize=7)
    if miou is not None and not np.isnan(miou):
        axes.axhline(100 * miou, color='red', linestyle='--', linewidth=1,
                     label=f'mIoU {100 * miou:.2f}%')
        axes.legend(loc='upper right')
    axes.set_xticks(positions, class_names, rotation=90)
    axes.set_xlim(-0.6, len(values) - 0.4)
    axes.set_ylim(0, 110)
    axes.set_ylabel('IoU (%)')
    axes.set_title('Per-class IoU')
    _save_figure(figure, path)


def write_report(report_dir, evaluation, class_names, image_scores, title='Evaluation',
                 class_colors=None):
    """Writes the figures, the example images and `index.html` into `report_dir`.

    Args:
        report_dir: created if needed; an earlier report there is replaced.
        evaluation: dict returned by `evaluate_dataset` (`confusion_matrix`, `per_class_iou`,
            `miou`, `pixel_accuracy`, `num_images`), or its JSON form from `result_to_json_dict`
            (`per_class_iou` keyed by class name).
        class_names: C names.
        image_scores: the `ImageScores` that watched the evaluation.
        title: page title. Run details (`_DETAIL_KEYS`: checkpoint, step, split, output stride,
            the inference options) are shown where `evaluation` has them (the JSON report of
            `evaluate_checkpoint` does).
        class_colors: (r, g, b) by class index, for the bars and the example masks; None for
            VOC's.

    Returns:
        The path of `index.html`.
    """
    examples_dir = os.path.join(report_dir, EXAMPLES_DIR)
    os.makedirs(examples_dir, exist_ok=True)
    for name in os.listdir(examples_dir):  # an earlier report's examples, not linked any more
        if name.startswith(('worst_', 'best_')):
            os.remove(os.path.join(examples_dir, name))
    per_class_iou = evaluation['per_class_iou']
    if isinstance(per_class_iou, dict):  # the JSON form keys IoU by class name
        per_class_iou = [per_class_iou[name] for name in class_names]
    plot_confusion_matrix(os.path.join(report_dir, CONFUSION_FILE),
                          evaluation['confusion_matrix'], class_names)
    plot_per_class_iou(os.path.join(report_dir, IOU_FILE), per_class_iou, class_names,
                       evaluation.get('miou'), class_colors)
    sections = []
    for kind, examples in (('worst', image_scores.worst()), ('best', image_scores.best())):
        rows = []
        for rank, example in enumerate(examples, 1):
            stem = f'{kind}_{rank}'
            files = {
                'image': f'{EXAMPLES_DIR}/{stem}_image.jpg',
                'ground truth': f'{EXAMPLES_DIR}/{stem}_label.png',
                'prediction': f'{EXAMPLES_DIR}/{stem}_prediction.png',
            }
            image_io.save_image_atomic(os.path.join(report_dir, files['image']), example.image)
            image_io.save_image_atomic(os.path.join(report_dir, files['ground truth']),
                                       visualize.colorize(example.label, class_colors))
            image_io.save_image_atomic(os.path.join(report_dir, files['prediction']),
                                       visualize.colorize(example.prediction, class_colors))
            rows.append((example, files))
        sections.append((kind, rows))
    path = os.path.join(report_dir, INDEX_FILE)
    with image_io.atomic_output(path, 'w') as f:
        f.write(_html(title, evaluation, class_names, per_class_iou, image_scores, sections))
    return path


_DETAIL_KEYS = ('checkpoint', 'global_step', 'split', 'output_stride', 'scales', 'flip',
                'crop_size', 'stride', 'precision')


def _html(title, evaluation, class_names, per_class_iou, image_scores, sections):
    e = html.escape
    details = [(k, evaluation[k]) for k in _DETAIL_KEYS if k in evaluation]
    details += [('images', evaluation.get('num_images')),
                ('mIoU', _percent(evaluation.get('miou'))),
                ('pixel accuracy', _percent(evaluation.get('pixel_accuracy')))]
    shown = set(shown_classes(evaluation['confusion_matrix']).tolist())
    absent = [name for i, name in enumerate(class_names) if i not in shown]
    parts = [
        '<!DOCTYPE html>', '<html><head><meta charset="utf-8">', f'<title>{e(title)}</title>',
        '<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}'
        'td,th{padding:4px 8px;border:1px solid #ccc;text-align:left;vertical-align:top}'
        'img.example{height:160px;image-rendering:pixelated}</style>',
        '</head><body>', f'<h1>{e(title)}</h1>', '<table>',
        *(f'<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>' for k, v in details),
        '</table>',
        '<h2>Confusion matrix</h2>',
        f'<p><img src="{CONFUSION_FILE}" alt="confusion matrix"></p>',
        '<p>Rows are ground truth, normalised to sum to 1; columns are predictions. Classes '
        'that occur in neither the ground truth nor the predictions are left out'
        + (f': {e(", ".join(absent))}.' if absent else ' (none here).')
        + ' A grey row is a class that was predicted but never occurs in the ground truth.</p>',
        '<h2>Per-class IoU</h2>',
        f'<p><img src="{IOU_FILE}" alt="per-class IoU"></p>',
        '<table><tr><th>class</th><th>IoU (%)</th></tr>',
        *(f'<tr><td>{e(name)}</td><td>{_percent(v)}</td></tr>'
          for name, v in zip(class_names, per_class_iou)),
        '</table>',
    ]
    ranked = image_scores.num_ranked
    for kind, rows in sections:
        parts += [f'<h2>{kind.capitalize()} images</h2>',
                  f'<p>By the image\'s own mIoU (classes in its ground truth or prediction), '
                  f'{len(rows)} of {ranked} ranked images.</p>',
                  '<table><tr><th>#</th><th>image id</th><th>mIoU</th><th>pixel accuracy</th>'
                  '<th>image</th><th>ground truth</th><th>prediction</th></tr>']
        for rank, (example, files) in enumerate(rows, 1):
            cells = ''.join(f'<td><img class="example" src="{e(src)}" alt="{e(what)}"></td>'
                            for what, src in files.items())
            parts.append(f'<tr><td>{rank}</td><td>{e(example.image_id)}</td>'
                         f'<td>{_percent(example.miou)}</td>'
                         f'<td>{_percent(example.pixel_accuracy)}</td>{cells}</tr>')
        parts.append('</table>')
    parts.append('</body></html>')
    return '\n'.join(parts) + '\n'


def _percent(value):
    if value is None or np.isnan(value):
        return 'n/a'
    return f'{100 * value:.2f}%'


def _save_figure(figure, path):
    figure.tight_layout()
    with image_io.atomic_output(path) as f:
        figure.savefig(f, format='png', dpi=DPI)
