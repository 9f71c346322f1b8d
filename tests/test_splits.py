"""The split lists the project ships: train_aug (SBD + VOC train, minus VOC val) and val."""
import re

import pytest

from libs.datasets import voc

ID_RE = re.compile(r'(?P<year>\d{4})_\d{6}')


def shipped_lines(split):
    with open(voc.shipped_split_path(split)) as f:
        return f.read().splitlines()


@pytest.mark.parametrize('split', ['train_aug', 'val'])
def test_shipped_list_has_the_paper_size_and_voc_ids(split):
    lines = shipped_lines(split)
    assert len(set(lines)) == len(lines) == voc.SPLIT_SIZES[split]  # 10582 and 1449
    assert lines == voc.read_split_ids(voc.shipped_split_path(split))
    bad = [line for line in lines if not ID_RE.fullmatch(line)]
    assert not bad, f'ids not like YYYY_NNNNNN: {bad[:5]}'
    assert {int(ID_RE.fullmatch(line)['year']) for line in lines} <= set(range(2007, 2013))


def test_train_aug_holds_no_val_image():
    overlap = set(shipped_lines('train_aug')) & set(shipped_lines('val'))
    assert not overlap, f'{len(overlap)} val ids in train_aug, e.g. {sorted(overlap)[:5]}'
