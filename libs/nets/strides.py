"""Strides beyond the target output stride become atrous rates (DeepLabV3, section 3.1).

The rule every backbone of the reference follows (slim's `stack_blocks_dense`, MobileNet's
`mobilenet_base`, Xception's `stack_blocks_dense`): layers stride as designed until the running
stride equals the target; from then on a layer that would stride runs at stride 1 with the current
rate, and every later layer's rate grows by that stride.
"""
OUTPUT_STRIDES = (8, 16, 32)


def strides_and_rates(strides, output_stride, initial_stride=1):
    """Per layer (stride, rate) for the nominal `strides` at the target `output_stride`.

    Args:
        strides: each layer's nominal stride, in order.
        output_stride: the target, one of `OUTPUT_STRIDES`.
        initial_stride: the stride already taken before the first of `strides`.
    Returns:
        A list of (stride, rate), one per layer.
    Raises:
        ValueError: an output stride outside `OUTPUT_STRIDES`, or one the layers cannot reach.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f'output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}')
    current, rate, plan = initial_stride, 1, []
    for stride in strides:
        if current == output_stride:
            plan.append((1, rate))
            rate *= stride
        else:
            plan.append((stride, 1))
            current *= stride
    if current != output_stride:
        raise ValueError(f'output stride {output_stride} cannot be reached (the network strides '
                         f'{current} in all)')
    return plan
