"""Which package of libs/ may import which: read from the source (every import statement, also
those inside functions), without importing anything.

datasets imports neither nets, runs, training nor evaluation; runs imports neither training nor
evaluation; neither imports a script; tfrecord does not import shards (the journal of renames
lives in tfrecord, and shards imports it).
"""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, '*.py'))
           if os.path.basename(p) != 'config.py'}


def imported_modules(path):
    """Every module `path` imports, as dotted names ('from libs.runs import lock' gives
    'libs.runs' and 'libs.runs.lock')."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f'{node.module}.{alias.name}' for alias in node.names)
    return names


def package_files(package):
    return sorted(glob.glob(os.path.join(ROOT, 'libs', package, '*.py')))


def forbidden_imports(paths, forbidden):
    found = []
    for path in paths:
        for name in sorted(imported_modules(path)):
            if any(name == f or name.startswith(f + '.') for f in forbidden):
                found.append(f'{os.path.relpath(path, ROOT)} imports {name}')
    return found


@pytest.mark.parametrize('package, forbidden', [
    ('datasets', ['libs.nets', 'libs.runs', 'libs.training', 'libs.evaluation']),
    ('runs', ['libs.training', 'libs.evaluation']),
])
def test_a_package_imports_no_package_above_it(package, forbidden):
    assert forbidden_imports(package_files(package), forbidden + sorted(SCRIPTS)) == []


def test_tfrecord_does_not_import_shards():
    assert forbidden_imports([os.path.join(ROOT, 'libs', 'datasets', 'tfrecord.py')],
                             ['libs.datasets.shards']) == []


def test_the_check_finds_an_import_inside_a_function(tmp_path):
    module = tmp_path / 'module.py'
    module.write_text('def f():\n    from libs.training import loop\n    return loop\n')
    assert forbidden_imports([str(module)], ['libs.training']) == [
        f'{os.path.relpath(str(module), ROOT)} imports libs.training',
        f'{os.path.relpath(str(module), ROOT)} imports libs.training.loop']
