"""DeepLabV3 (Chen et al., 2017) and DeepLabV3+ (Chen et al., 2018): a backbone with atrous
convolution, ASPP, an optional decoder, and 1x1 logits.

The backbone is any variant of `libs/nets/variants.py` (slim's ResNet-v1, the reference's beta
ResNets, MobileNetV2, Xception-65). The weights do not depend on the output stride (only strides
and rates do), so the output stride is an argument of each call: a model trained at OS 16 is
evaluated at OS 8 (paper, section 4.1) by calling it with `output_stride=8`.
"""
import numpy as np
import tensorflow as tf

from libs.nets import variants
from libs.nets.aspp import ASPP, ASPP_DEPTH
from libs.nets.decoder import Decoder
from libs.nets.dropout import replica_dropout
from libs.nets.layers import Conv2D, resize_aligned_corners
from libs.nets.strides import OUTPUT_STRIDES

LOGITS_SCOPE = 'logits/semantic'


class DeepLabV3(tf.Module):
    """The DeepLabV3 network (DeepLabV3+ with a decoder).

    Args:
        num_classes: number of output classes (21 for VOC).
        depth: ResNet depth, 50, 101 or 152, when `model_variant` is None.
        output_stride: the default output stride of a call, 8, 16 or 32.
        multi_grid: the last block's unit rate multipliers (paper, Table 3); None: the
            variant's default ((1, 2, 4) for the ResNets, (1, 1, 1) for Xception).
        freeze_bn: batch norm uses its moving statistics and gamma/beta are not trained.
        sync_bn: batch statistics are all-reduced across replicas (MirroredStrategy).
        bn_decay: moving-average decay of batch norm; 0.9997 in the paper.
        seed: seed of the initial weights; the same seed gives the same network.
        model_variant: a name of `variants.VARIANTS`; None: `resnet_v1_<depth>`.
        depth_multiplier: MobileNetV2's depth multiplier.
        depth_divisor: the rounding of MobileNetV2's scaled depths (8: slim's ImageNet files; 1:
            the reference DeepLab's at multipliers other than 1); None: the reference's.
        atrous_rates: ASPP's atrous rates at output stride 16; () for none; None: the variant's.
        aspp_separable: separable atrous branches; None: the variant's.
        decoder_output_stride: the V3+ decoder's output stride (4); None: no decoder.
        aspp_pooling_first: image pooling first in ASPP's concatenation (the reference's order;
            False for runs of this project written before it was adopted).
        dropout_keep_prob: keep probability of the dropout after ASPP's projection in training
            (`libs/nets/dropout.py`); 1.0: none; None: the variant's (the reference's 0.9, or 1.0
            for slim's ResNets).
    """

    def __init__(self, num_classes=21, depth=101, output_stride=16, multi_grid=None,
                 freeze_bn=False, sync_bn=False, bn_decay=0.9997, seed=None, model_variant=None,
                 depth_multiplier=1.0, atrous_rates=None, aspp_separable=None,
                 decoder_output_stride=None, aspp_pooling_first=True, depth_divisor=None,
                 dropout_keep_prob=1.0):
        super().__init__(name='deeplabv3')
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f'output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}')
        if model_variant is None and f'resnet_v1_{depth}' not in variants.VARIANTS:
            raise ValueError(f'depth must be 50, 101 or 152, got {depth}')
        variant = variants.get(model_variant or f'resnet_v1_{depth}')
        rng = np.random.default_rng(seed)
        bn_args = dict(decay=bn_decay, frozen=freeze_bn, sync=sync_bn)
        multi_grid = variant.multi_grid if multi_grid is None else tuple(multi_grid)
        if depth_multiplier not in variant.depth_multipliers:
            raise ValueError(f'{variant.name} takes depth multipliers '
                             f'{", ".join(map(str, variant.depth_multipliers))}, '
                             f'got {depth_multiplier}')
        if decoder_output_stride is not None and (
                decoder_output_stride not in variant.decoder_end_points
                or decoder_output_stride >= output_stride):
            raise ValueError(f'decoder output stride {decoder_output_stride}: {variant.name} '
                             f'has decoder end points at '
                             f'{", ".join(map(str, sorted(variant.decoder_end_points)))}, and it '
                             f'must be below the output stride {output_stride}')
        if dropout_keep_prob is None:
            dropout_keep_prob = variant.dropout_keep_prob
        if not 0.0 < dropout_keep_prob <= 1.0:
            raise ValueError(f'dropout keep probability must be in (0, 1], got {dropout_keep_prob}')
        self.variant = variant
        self.dropout_keep_prob = dropout_keep_prob
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.preprocessing = variant.preprocessing
        self.backbone = variant.build(multi_grid, depth_multiplier, depth_divisor, rng, bn_args)
        self.aspp = ASPP(self.backbone.out_channels, rng, bn_args,
                         rates_at_os16=(variant.atrous_rates if atrous_rates is None
                                        else tuple(atrous_rates)),
                         separable=(variant.aspp_separable if aspp_separable is None
                                    else aspp_separable),
                         pooling_first=aspp_pooling_first)
        self.decoder_output_stride = decoder_output_stride
        head_channels = ASPP_DEPTH
        if decoder_output_stride is not None:
            self.low_level_end_point = variant.decoder_end_points[decoder_output_stride]
            self.decoder = Decoder(ASPP_DEPTH, self.backbone.low_level_channels(
                self.low_level_end_point), rng, bn_args)
            head_channels = self.decoder.out_channels
        self.classifier = Conv2D(LOGITS_SCOPE, 1, head_channels, num_classes, rng,
                                 use_bias=True)

    def __call__(self, images, training=False, output_stride=None, dropout_seed=None,
                 replica=(0, 1)):
        """Computes logits at 1/OS of the input (1/decoder OS with a decoder).

        Args:
            images: normalised images [B, H, W, 3] (`self.preprocessing`).
            training: batch statistics and moving-average updates in batch norm (unless frozen),
                and dropout after ASPP.
            output_stride: overrides the model's default output stride for this call.
            dropout_seed: int64 [2], the step's dropout seed (`dropout.step_seed`); needed in
                training when `dropout_keep_prob` < 1.
            replica: (index, count) of this replica's batch in the global batch, for dropout.
        Returns:
            logits [B, ceil(H / S), ceil(W / S), num_classes], S the output stride, or the
            decoder's output stride with a decoder.
        """
        output_stride = output_stride or self.output_stride
        features, endpoints = self.backbone(images, output_stride, training)
        net = self.aspp(features, output_stride, training)
        if training and self.dropout_keep_prob < 1.0:
            if dropout_seed is None:
                raise ValueError('training with dropout needs the step\'s dropout_seed')
            net = replica_dropout(net, self.dropout_keep_prob, dropout_seed, *replica)
        if self.decoder_output_stride is not None:
            net = self.decoder(net, endpoints[self.low_level_end_point], training)
        return self.classifier(net)

    @property
    def regularized_variables(self):
        """Convolution kernels (`.../weights`): weight decay applies to these and nothing else.

        Depthwise kernels are left out, as the reference leaves them (`regularize_depthwise`
        False in every published configuration).
        """
        return [v for v in self.trainable_variables if v.name.endswith('/weights:0')]


def upsample_logits(logits, size):
    """Bilinear upsampling of logits [B, h, w, C] to `size` (H, W), corners aligned.

    Feature i sits on input pixel i * OS (slim's conv2d_same), so aligning corners maps features
    back onto the pixels they were computed at when the input was OS*k + 1 pixels on each side
    (training crops; inference pads to such sizes, see `libs/evaluation/inference.py`).
    """
    return resize_aligned_corners(logits, size)


__all__ = ['DeepLabV3', 'LOGITS_SCOPE', 'OUTPUT_STRIDES', 'resize_aligned_corners',
           'upsample_logits']
