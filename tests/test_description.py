"""dataset.json: written atomically and merged per split, checked against the shards when read."""
import json
import multiprocessing
import os

import pytest

from libs.datasets import description as desc

THREE = desc.DatasetDescription('toy', ('road', 'car', 'sky'),
                                ((128, 64, 128), (0, 0, 142), (70, 130, 180)))


def _shards(folder, split, sizes):
    paths = []
    for k, size in enumerate(sizes):
        path = os.path.join(folder, f'{split}-{k:05d}-of-{len(sizes):05d}.tfrecord')
        with open(path, 'wb') as f:
            f.write(b'x' * size)
        paths.append(path)
    return paths


def test_record_read_and_check(tmp_path):
    train = _shards(tmp_path, 'train', [10, 12])
    val = _shards(tmp_path, 'val', [7])
    desc.record_split(THREE, str(tmp_path), 'train', 5, [100, 20, 3], train)
    desc.record_split(THREE, str(tmp_path), 'val', 2, [40, 0, 9], val)
    with open(tmp_path / desc.DESCRIPTION_FILE) as f:
        raw = json.load(f)
    assert raw['class_names'] == ['road', 'car', 'sky'] and raw['ignore_label'] == 255
    assert raw['splits']['train'] == {
        'num_images': 5, 'class_pixels': [100, 20, 3],
        'shards': [['train-00000-of-00002.tfrecord', 10], ['train-00001-of-00002.tfrecord', 12]]}
    found = desc.read_description(str(tmp_path))
    assert found.num_classes == 3 and found.palette[1] == (0, 0, 142)
    assert desc.check_split(found, str(tmp_path), 'val', val).class_pixels == (40, 0, 9)
    assert [p for p in os.listdir(tmp_path) if 'tmp' in p] == []


def test_shards_changed_after_conversion_are_refused(tmp_path):
    train = _shards(tmp_path, 'train', [10, 12])
    desc.record_split(THREE, str(tmp_path), 'train', 5, [1, 2, 3], train)
    found = desc.read_description(str(tmp_path))
    with open(train[1], 'ab') as f:
        f.write(b'more')
    with pytest.raises(ValueError, match='train-00001-of-00002.tfrecord has 16 bytes, 12 when'):
        desc.check_split(found, str(tmp_path), 'train', train)
    with pytest.raises(ValueError, match='is missing'):
        desc.check_split(found, str(tmp_path), 'train', train[:1])
    with pytest.raises(ValueError, match="does not describe split 'val'"):
        desc.check_split(found, str(tmp_path), 'val', _shards(tmp_path, 'val', [3]))


def test_another_dataset_in_the_same_folder_is_refused(tmp_path):
    desc.record_split(THREE, str(tmp_path), 'train', 1, [1, 2, 3], _shards(tmp_path, 'train', [4]))
    other = desc.DatasetDescription('other', ('a', 'b'), ((0, 0, 0), (1, 1, 1)))
    with pytest.raises(ValueError, match=r'another dataset \(toy, 3 classes\) than other \(2'):
        desc.check_can_record(other, str(tmp_path))
    with pytest.raises(ValueError, match='another dataset'):
        desc.record_split(other, str(tmp_path), 'val', 1, [1, 2], _shards(tmp_path, 'val', [4]))
    assert set(desc.read_description(str(tmp_path)).splits) == {'train'}


def test_invalid_descriptions(tmp_path):
    assert desc.read_description(str(tmp_path)) is None
    (tmp_path / desc.DESCRIPTION_FILE).write_text('{"name": "x"')
    with pytest.raises(ValueError, match='is not a valid dataset description'):
        desc.read_description(str(tmp_path))
    with pytest.raises(ValueError, match='2 classes but 1 palette'):
        desc.DatasetDescription('x', ('a', 'b'), ((0, 0, 0),))
    with pytest.raises(ValueError, match='ignore label 1 is a class index'):
        desc.DatasetDescription('x', ('a', 'b'), ((0, 0, 0), (1, 1, 1)), ignore_label=1)


def _record(args):
    folder, split = args
    paths = _shards(folder, split, [5])
    desc.record_split(THREE, folder, split, 1, [1, 1, 1], paths)


def test_concurrent_converters_keep_every_split(tmp_path):
    splits = [f'part{k}' for k in range(12)]
    with multiprocessing.get_context('fork').Pool(4) as pool:
        pool.map(_record, [(str(tmp_path), split) for split in splits])
    assert set(desc.read_description(str(tmp_path)).splits) == set(splits)


def test_the_class_count_and_names_travel_from_the_records_to_the_run(trained_run, tmp_path,
                                                                      capsys):
    """Records converted with 25 classes: train.py takes 25 without being told and records the
    names in config.json; evaluating the 21-class run on them is refused with both counts."""
    import evaluate
    import train
    from libs.datasets.voc_conversion import convert_split
    records = str(tmp_path / 'records25')
    for split in ('train', 'val'):
        convert_split(trained_run.voc_dir, split, records, num_classes=25, num_workers=1,
                      progress=False)
    assert desc.read_description(records).name == 'voc_layout_25'
    run_dir = tmp_path / 'run'
    assert train.main(['--data-dir', records, '--split-name', 'train', '--num-layers', '50',
                       '--batch-size', '2', '--input-size', '65', '--num-steps', '1',
                       '--snapshot-dir', str(run_dir)]) == 0
    recorded = json.loads((run_dir / 'config.json').read_text())
    assert recorded['num_classes'] == 25
    assert recorded['class_names'] == [f'class_{i}' for i in range(25)]
    report = tmp_path / 'val.json'
    assert evaluate.main(['--restore-from', str(run_dir), '--data-dir', records,
                          '--split-name', 'val', '--output-json', str(report)]) == 0
    assert list(json.loads(report.read_text())['per_class_iou'])[-1] == 'class_24'
    capsys.readouterr()
    assert evaluate.main(['--restore-from', trained_run.run_dir, '--data-dir', records,
                          '--split-name', 'val']) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f'error: {records} holds voc_layout_25 with 25 classes; the run was trained with 21')
