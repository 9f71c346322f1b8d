"""The names of the network variants (`variants.VARIANTS`), importable without TensorFlow: the
scripts' flags offer them, and a bad flag is refused before TensorFlow starts. `variants.py`
checks at import that its table has exactly these."""
VARIANT_NAMES = ('resnet_v1_50', 'resnet_v1_101', 'resnet_v1_152', 'resnet_v1_50_beta',
                 'resnet_v1_101_beta', 'mobilenet_v2', 'xception_65')
