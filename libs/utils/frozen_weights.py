"""oneDNN's frozen-weights mode, for processes that only infer.

With `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`, each convolution kernel of a traced function reorders
its weights into oneDNN's blocked layout on its first call and keeps that copy, instead of
reordering on every call: ResNet-101 OS 16 inference at 513 takes 0.354 s instead of 0.399 s in
float32 and 0.195 s instead of 0.209 s in bfloat16 on Zen 5 (docs/performance.md, "Frozen
weights"). The copy belongs to the kernel, whatever weights reach it later (measured): a traced
function called again after its weights were assigned new values, a function that takes the
weights as an argument, or an eager convolution called again with other weights of the same
shape, all keep computing with the first ones. Two traced functions have kernels of their own.
So only a process whose every convolution kernel always sees the same weights may turn it on:
evaluate.py, predict.py, demo_app.py, export.py and benchmark.py's inference modes, where each
network is one traced function over weights loaded before its first call (tests/test_predict.py
checks predict.py's class maps against a process without it, to the byte); never a training
process, whose in-process validation runs weights that change.

TensorFlow reads the variable when it starts; this module imports no TensorFlow.
"""
import os
import sys

VARIABLE = 'TF_ONEDNN_ASSUME_FROZEN_WEIGHTS'


def assume_frozen_weights():
    """Turns the mode on for this process, unless the user set the variable (either way) or
    TensorFlow is already imported (e.g. a test calling a script's `main`, whose process also
    trains).

    Returns:
        whether the mode is on.
    """
    if 'tensorflow' not in sys.modules:
        os.environ.setdefault(VARIABLE, '1')
    return os.environ.get(VARIABLE, '0').lower() in ('1', 'true')
