"""A web page to try a model on: a photo or a webcam snapshot in, its classes out (demo_app.py).

The page is a Gradio Blocks app. Each image goes through predict.py's one path
(`prediction.predict_file`: read upright with EXIF orientation, then the `MultiScalePredictor`),
and gives what predict.py writes for it: the photo tinted with a legend (`overlay_with_legend`),
and the class map as the same palette PNG (`visualize.save_palette_png`), to download; the page
also shows the colour mask and a table of the classes present with their share of the pixels.
A file that cannot be read or predicted (e.g. larger than `--eval-crop-size`) gives its one-line
reason in the page (`gr.Error`).

Gradio is imported here and only here; importing this module also imports TensorFlow.
"""
import html
import os
import tempfile

import numpy as np

from libs.evaluation import prediction
from libs.utils import image_io, visualize

TABLE_HEADERS = ['index', 'class', 'pixels (%)']


def class_shares(label, class_names):
    """The classes present in a class map and their share of its pixels, by class index.

    Args:
        label: integer array [H, W] of class indices.
        class_names: names by class index (an index beyond them is named `class_<i>`).
    Returns:
        List of [index, name, percentage rounded to 0.01] for each class present.
    """
    indices, counts = np.unique(np.asarray(label), return_counts=True)
    return [[int(c), class_names[c] if c < len(class_names) else f'class_{c}',
             round(100.0 * int(n) / label.size, 2)] for c, n in zip(indices, counts)]


def segment(predictor, path, class_names, class_colors, output_dir):
    """What the page shows for one image file.

    Args:
        predictor: as `prediction.predict_files`', e.g. a `MultiScalePredictor`.
        path: the uploaded image file.
        class_names: names by class index.
        class_colors: (r, g, b) by class index, or None for VOC's.
        output_dir: an existing folder; the class map is written to a new folder inside it.
    Returns:
        (overlay with legend uint8 [H', W', 3] (`overlay_with_legend`), colour mask uint8
        [H, W, 3], path of `<stem>.png` (the palette PNG predict.py writes), `class_shares`
        rows), where [H, W] is the upright photo's size.
    Raises:
        prediction.ImageFailure: the file cannot be read or predicted; the message says why.
    """
    image, label = prediction.predict_file(predictor, path)
    # A folder per image: two uploads with the same file name never overwrite each other's PNG.
    folder = tempfile.mkdtemp(dir=output_dir)
    png = image_io.output_paths(path, folder, overlay=False)[0]
    visualize.save_palette_png(png, label, class_colors)
    return (prediction.overlay_with_legend(image, label, class_names, class_colors),
            visualize.colorize(label, class_colors), png, class_shares(label, class_names))


def build_demo(predictor, class_names, class_colors, work_dir, title, description=''):
    """The Gradio page.

    One event, `/segment` (also what `gradio_client` calls): image file -> overlay with legend,
    colour mask, class map PNG, table of the classes present. One prediction runs at a time
    (others queue), which is what a CPU model affords.

    Args:
        predictor, class_names, class_colors: as `segment`.
        work_dir: an existing folder for the class map PNGs, allowed to be served; the caller
            removes it (Gradio copies each PNG into its own cache, cleared by `delete_cache`).
        title: the page's title and heading.
        description: Markdown under the heading (e.g. the checkpoint and inference options).
    Returns:
        `gr.Blocks`, not launched.
    """
    import gradio as gr

    def run(upload):
        # `upload` is Gradio's record of the file (preprocess=False below): {'path': ..., ...}.
        if upload is None:  # the photo was cleared
            return None, None, None, None
        path = upload.get('path')
        if path is None:
            raise gr.Error('no image file arrived; upload it again', print_exception=False)
        try:
            return segment(predictor, path, class_names, class_colors, work_dir)
        except prediction.ImageFailure as e:
            # The message is shown as HTML: a file name such as <a>.png stays text.
            raise gr.Error(html.escape(f'{os.path.basename(path)}: {e}', quote=False),
                           print_exception=False) from None

    # Hour-old files are removed from Gradio's cache every hour: a demo left running stays small.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f'# {title}\n\n{description}')
        with gr.Row():
            photo = gr.Image(sources=['upload', 'webcam'], type='filepath', label='Photo')
            # PNG: the class colours arrive exact (Gradio's default, WebP, is lossy).
            # No buttons: Gradio's toolbar sits over the image's top right, on the legend's
            # first row, even a single one (the browser's "Save image as" remains).
            overlay = gr.Image(label='Overlay and legend', format='png', interactive=False,
                               buttons=[])
        with gr.Row():
            mask = gr.Image(label='Colour mask', format='png', interactive=False,
                            buttons=['download', 'fullscreen'])
            with gr.Column():
                table = gr.Dataframe(headers=TABLE_HEADERS, label='Classes present',
                                     interactive=False)
                class_map = gr.File(label='Class map: palette PNG of class indices, as '
                                          'predict.py writes it', interactive=False)
        # No preprocessing: the uploaded file itself is read as predict.py reads it (EXIF
        # orientation, any mode), so the page and predict.py see the same pixels; and a file
        # Pillow cannot open gets `segment`'s one-line reason, not Gradio's wrapped traceback.
        photo.change(run, inputs=photo, outputs=[overlay, mask, class_map, table],
                     api_name='segment', preprocess=False, concurrency_limit=1)
    return demo
