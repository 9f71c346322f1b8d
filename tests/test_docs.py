"""The commands in README.md, docs/*.md and recipes/*.md name scripts that exist, flags those
scripts accept, and make targets the Makefile has.

Each fenced command block (```bash, ```sh or a bare ```) is read line by line, lines continued
with a trailing backslash joined. A command is `<python> <script>.py [args]` (any python: python3,
.venv/bin/python, /tmp/peer/bin/python) or `make [VAR=value] target`. A script's flags are those
its `--help` prints, as a user would see them (the scripts import TensorFlow only after parsing,
so this takes well under a second per script); a script whose `--help` cannot run here for want
of an optional package (bench/torchvision_peer.py needs torch) is read for its `add_argument`
calls instead. No TensorFlow is imported by this test.
"""
import ast
import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted([os.path.join(ROOT, 'README.md')] + glob.glob(os.path.join(ROOT, 'docs', '*.md'))
              + glob.glob(os.path.join(ROOT, 'recipes', '*.md')))
_FENCE = re.compile(r'^(\s*)```\s*([A-Za-z0-9_+-]*)\s*$')
_PYTHON = re.compile(r'^python(3(\.\d+)?)?$')
_FLAG = re.compile(r'(?<![\w-])(--[A-Za-z0-9][A-Za-z0-9_-]*)')
# Arguments after `--` go to another script: the launcher passes them to train_distributed.py.
FORWARDS_TO = {'launch_local_cluster.py': 'train_distributed.py'}
_SEPARATORS = {'&&', '||', '|', ';', '&', '(', ')', '>', '>>', '<', '2>', '2>&1'}


def command_blocks(text):
    """The fenced blocks of `text` that hold commands: (first line number, lines)."""
    blocks, block, start, language = [], None, 0, ''
    for number, line in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(line)
        if fence and block is None:
            block, start, language = [], number + 1, fence.group(2).lower()
        elif fence:
            if language in ('', 'bash', 'sh', 'shell', 'console'):
                blocks.append((start, block))
            block = None
        elif block is not None:
            block.append(line)
    return blocks


def command_lines(lines, first_number):
    """Logical lines: (line number, text), trailing backslashes joined, comments dropped."""
    joined, pending, number = [], '', None
    for offset, line in enumerate(lines):
        if not pending:
            number = first_number + offset
        if line.rstrip().endswith('\\'):
            pending += line.rstrip()[:-1] + ' '
            continue
        joined.append((number, pending + line))
        pending = ''
    if pending:
        joined.append((number, pending))
    return joined


def split_commands(text):
    """The simple commands of one shell line, each a list of words (None if it does not parse
    as shell, e.g. program output quoted in a block)."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = '#'
        words = list(lexer)
    except ValueError:
        return None
    commands, current = [], []
    for word in words:
        if word in _SEPARATORS or set(word) <= set('&|;()<>'):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(word)
    if current:
        commands.append(current)
    return commands


def _script_path(word):
    """The repository path a script word names ('.../train.py' in quoted output: its name)."""
    if word.startswith('.../'):
        word = os.path.basename(word)
    return os.path.normpath(os.path.join(ROOT, word))


def python_script(words):
    """(script word, its arguments) when `words` run a .py script with some python, else None."""
    for i, word in enumerate(words):
        if _PYTHON.match(os.path.basename(word)):
            rest = words[i + 1:]
            while rest and rest[0].startswith('-') and not rest[0].endswith('.py'):
                if rest[0] == '-m':
                    return None  # a module (pytest, venv, pip): not one of ours
                rest = rest[1:]
            if rest and rest[0].endswith('.py'):
                return rest[0], rest[1:]
            return None
    return None


def make_targets_named(words):
    """The targets of a `make` command (None if `words` is not one)."""
    for i, word in enumerate(words):
        if word == 'make':
            targets, skip = [], False
            for arg in words[i + 1:]:
                if skip:
                    skip = False
                elif arg in ('-o', '-C', '-f', '-j'):
                    skip = True
                elif not arg.startswith('-') and '=' not in arg:
                    targets.append(arg)
            return targets
        if ('=' not in word and word not in ('nice', 'time', 'env')
                and not word.lstrip('-').isdigit()):
            return None
    return None


@functools.lru_cache(maxsize=None)
def script_flags(path):
    """The long flags `path` accepts: from its --help, or its add_argument calls if --help
    cannot run here."""
    help_run = subprocess.run([sys.executable, path, '--help'], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
    if help_run.returncode == 0:
        return frozenset(_FLAG.findall(help_run.stdout))
    if 'ModuleNotFoundError' not in help_run.stderr:
        raise AssertionError(f'{path} --help failed:\n{help_run.stderr[-2000:]}')
    flags = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if (isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'add_argument'):
            flags.update(arg.value for arg in node.args
                         if isinstance(arg, ast.Constant) and str(arg.value).startswith('--'))
    return frozenset(flags)


@functools.lru_cache(maxsize=None)
def makefile_targets():
    with open(os.path.join(ROOT, 'Makefile')) as f:
        return frozenset(re.findall(r'^([A-Za-z0-9_.-]+)\s*:(?!=)', f.read(), re.M))


def problems_in(text, name):
    """Every script, flag and make target of `text`'s command blocks that does not exist."""
    found = []
    for first, lines in command_blocks(text):
        for number, line in command_lines(lines, first):
            for words in split_commands(line) or []:
                where = f'{name}:{number}'
                targets = make_targets_named(words)
                if targets is not None:
                    found += [f'{where}: make target {t!r} is not in the Makefile'
                              for t in targets if t not in makefile_targets()]
                    continue
                script = python_script(words)
                if script is None:
                    continue
                word, args = script
                path = _script_path(word)
                if not os.path.isfile(path):
                    found.append(f'{where}: script {word} does not exist')
                    continue
                flags, owner = script_flags(path), word
                for arg in args:
                    if arg == '--' and os.path.basename(path) in FORWARDS_TO:
                        owner = FORWARDS_TO[os.path.basename(path)]
                        flags = script_flags(_script_path(owner))
                        continue
                    flag = arg.split('=', 1)[0]
                    if flag.startswith('--') and flag not in flags:
                        found.append(f'{where}: {owner} has no flag {flag}')
    return found


def test_a_wrong_flag_a_missing_script_and_a_missing_target_are_found():
    text = ('```sh\n'
            '.venv/bin/python train.py --data-dir data/records \\\n'
            '  --no-such-flag 3\n'
            'python3 no_such_script.py --x\n'
            'DATA=/voc make demo && make no-such-target\n'
            'python launch_local_cluster.py --num-workers 2 -- --num-steps 3 --num-ps 1\n'
            '.venv/bin/python evaluate.py --restore-from runs/x  # --not-a-flag in a comment\n'
            '```\n')
    assert problems_in(text, 'doc') == [
        'doc:2: train.py has no flag --no-such-flag',
        'doc:4: script no_such_script.py does not exist',
        "doc:5: make target 'no-such-target' is not in the Makefile",
        'doc:6: train_distributed.py has no flag --num-ps']


@pytest.mark.parametrize('path', DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_commands_in_the_docs_name_real_scripts_flags_and_targets(path):
    with open(path) as f:
        text = f.read()
    assert problems_in(text, os.path.relpath(path, ROOT)) == []
