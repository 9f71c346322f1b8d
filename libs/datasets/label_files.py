"""Reading the image and label files of a conversion: each fully decoded and checked.

Labels are read as the values they store: palette ('P') and greyscale ('L') PNGs as they are; a
label saved as RGB colours is mapped back through a table of colours (the VOC palette by default,
a folder dataset's class colours) with a warning, or refused when it holds other colours. SBD's
`cls/*.mat` files (struct `GTcls.Segmentation`, from
http://home.bharathh.info/pubs/codes/SBD/download.html) are read when no `.png` of that id exists;
`SegmentationClassAug` is the commonly distributed PNG conversion of the same labels.
Records store labels as greyscale PNGs (see `tfrecord`).
"""
import io

import numpy as np
from PIL import Image

from libs.datasets import voc
from libs.utils import messages

# PIL modes TensorFlow's decode_image(channels=3) turns into 8-bit RGB.
_IMAGE_MODES = {'jpeg': ('RGB', 'L'), 'png': ('RGB', 'RGBA', 'L', 'LA', 'P')}


class EntryError(ValueError):
    """One image or label file that cannot be used; the message says why."""


def detect_format(data):
    """'jpeg', 'png' or None, from the leading bytes of an encoded image."""
    if data.startswith(b'\xff\xd8\xff'):
        return 'jpeg'
    if data.startswith(b'\x89PNG\r\n\x1a\n'):
        return 'png'
    return None


def _decode(data, what):
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes everything: a truncated file fails here, not at open
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        raise EntryError(f'cannot decode {what}: {e}') from None
    return image


def read_image(path):
    """(format, (width, height)) of a fully decodable JPEG or PNG image file.

    Raises:
        EntryError: the file is not a JPEG or PNG, cannot be decoded, or has a mode that
            TensorFlow's `decode_image(channels=3)` does not turn into RGB.
    """
    with open(path, 'rb') as f:
        data = f.read()
    fmt = detect_format(data)
    if fmt is None:
        raise EntryError('image is neither JPEG nor PNG (the records store JPEG or PNG bytes)')
    image = _decode(data, 'image')
    if image.mode not in _IMAGE_MODES[fmt]:
        raise EntryError(f'unsupported image mode {image.mode!r} for {fmt}')
    return fmt, image.size


def _pack(colours):
    """uint32 [...] of uint8 [..., 3] RGB colours, one int per colour."""
    colours = np.asarray(colours, np.uint32)
    return (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]


VOC_COLOURS = {tuple(int(v) for v in colour): i for i, colour in enumerate(voc.PALETTE)}


def _colours_to_indices(rgb, colour_values, colours_name):
    """uint8 [H, W, 3] colours -> uint8 [H, W] values through {(r, g, b): value}; EntryError
    naming the colours that are not in the table."""
    colours, inverse = np.unique(_pack(rgb), return_inverse=True)
    lookup = dict(zip(_pack(list(colour_values)).tolist(), colour_values.values()))
    indices = [lookup.get(c) for c in colours.tolist()]
    foreign = [c for c, i in zip(colours.tolist(), indices) if i is None]
    if foreign:
        limit = messages.MAX_LISTED
        shown = ', '.join(str((c >> 16, (c >> 8) & 255, c & 255)) for c in foreign[:limit])
        more = f' and {len(foreign) - limit} more' if len(foreign) > limit else ''
        raise EntryError(
            f'label is an RGB image with colours that are not {colours_name} colours: '
            f'{shown}{more}; labels must be palette (P) or greyscale (L) PNGs of class indices')
    return np.asarray(indices, np.uint8)[inverse.reshape(-1)].reshape(rgb.shape[:2])


def _read_sbd_mat(path):
    import scipy.io  # only SBD .mat labels need scipy; keeps worker start-up light

    try:
        seg = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)['GTcls'].Segmentation
    except (KeyError, AttributeError):
        raise EntryError('no GTcls.Segmentation in this .mat (expected an SBD cls/*.mat)') \
            from None
    except Exception as e:
        raise EntryError(f'cannot read .mat label: {e}') from None
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 255:
        raise EntryError(f'GTcls.Segmentation is not a 2-D map of values 0..255 '
                         f'(shape {seg.shape})')
    return seg.astype(np.uint8)


def read_label(path, colour_values=VOC_COLOURS, colours_name='VOC palette'):
    """The values of a label file: a PNG (P, L, or RGB colours of `colour_values`) or an SBD
    cls .mat.

    Args:
        path: the label file.
        colour_values: {(r, g, b): value} that maps an RGB label back to values; None refuses
            RGB labels.
        colours_name: what the colours are, for the messages, e.g. 'VOC palette'.

    Returns:
        (uint8 [H, W] values, a warning string or None).

    Raises:
        EntryError: the file cannot be decoded or does not hold class indices.
    """
    if path.endswith('.mat'):
        return _read_sbd_mat(path), None
    with open(path, 'rb') as f:
        data = f.read()
    if detect_format(data) != 'png':
        raise EntryError('label is not a PNG file')
    image = _decode(data, 'label')
    if image.mode in ('P', 'L'):
        return np.array(image), None
    if image.mode in ('RGB', 'RGBA') and colour_values is not None:
        indices = _colours_to_indices(np.asarray(image.convert('RGB')), colour_values,
                                      colours_name)
        return indices, (f'{path}: label saved as RGB colours; mapped back to class indices '
                         f'through the {colours_name} (save labels as palette PNGs to avoid '
                         'this)')
    raise EntryError(f'unsupported label mode {image.mode!r}; expected a palette (P) or '
                     'greyscale (L) PNG of class indices')


def class_pixel_counts(label, num_classes, ignore_label=voc.IGNORE_LABEL):
    """Pixels of each class in a label [H, W] (the ignore label left out), as C ints."""
    return tuple(int(n) for n in np.bincount(label[label != ignore_label].ravel(),
                                             minlength=num_classes))


def encode_label(label):
    """uint8 [H, W] class indices -> greyscale ('L') PNG bytes, as the records store labels."""
    buffer = io.BytesIO()
    Image.fromarray(label, 'L').save(buffer, format='PNG')
    return buffer.getvalue()
