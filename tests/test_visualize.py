"""VOC colormap rendering and palette PNG round trips."""
import os

import numpy as np
import pytest
from PIL import Image

from libs.datasets import voc
from libs.utils import visualize


def _label():
    """[9, 11] label holding every VOC class index and the ignore label 255."""
    label = np.arange(9 * 11, dtype=np.int64).reshape(9, 11) % voc.NUM_CLASSES
    label[0, :3] = 255
    return label


def test_palette_png_round_trip(tmp_path):
    label = _label()
    path = tmp_path / 'pred.png'
    visualize.save_palette_png(str(path), label)
    assert os.listdir(tmp_path) == ['pred.png']  # no temporary file left behind
    with Image.open(path) as image:
        assert image.mode == 'P'
        palette = np.array(image.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette, voc.PALETTE)
    read = visualize.read_label_png(str(path))
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, label)
    assert (read == 255).sum() == 3


def test_read_label_png_refuses_rgb(tmp_path):
    path = tmp_path / 'rgb.png'
    Image.fromarray(visualize.colorize(_label())).save(path)
    with pytest.raises(ValueError, match='RGB-coloured'):
        visualize.read_label_png(str(path))


def test_colorize_uses_voc_palette():
    colors = visualize.colorize(np.array([[0, 1, 15, 255]]))
    assert colors.dtype == np.uint8 and colors.shape == (1, 4, 3)
    np.testing.assert_array_equal(
        colors[0], [[0, 0, 0], [128, 0, 0], [192, 128, 128], [224, 224, 192]])
    with pytest.raises(ValueError):
        visualize.colorize(np.array([[256]]))


def test_overlay_blends_objects_and_optionally_background():
    image = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[0, 1], [255, 0]])
    blended = visualize.overlay(image, label, alpha=0.5)
    np.testing.assert_array_equal(blended[0, 0], [100, 100, 100])   # background kept
    np.testing.assert_array_equal(blended[0, 1], [114, 50, 50])     # (100 + (128, 0, 0)) / 2
    np.testing.assert_array_equal(blended[1, 0], [162, 162, 146])   # (100 + (224, 224, 192)) / 2
    everything = visualize.overlay(image, label, alpha=0.5, skip_background=False)
    np.testing.assert_array_equal(everything[0, 0], [50, 50, 50])   # background is black
    with pytest.raises(ValueError):
        visualize.overlay(image, label[:1])
