"""Dynamic loss scaling for float16 training (Micikevicius et al., "Mixed Precision Training",
2018, section 3.2).

float16 holds magnitudes of 6e-8 to 65504: many activation gradients fall below the range and
become zero. Scaling the loss by S before the backward pass scales every gradient by S and lifts
them into range; the gradients are divided by S again before the update. Too large an S makes some
gradient overflow to Inf or NaN: that step is skipped and S halved. After `growth_interval`
finite steps in a row S is doubled again, so it stays near the largest value that does not
overflow.

Nothing here depends on the compute dtype: the train step uses it when the precision is float16,
and the tests drive it with float32 compute.
"""
import tensorflow as tf

INITIAL_SCALE = 2.0 ** 15
GROWTH_INTERVAL = 2000
# Skips in a row that stop a run as diverged. From the initial scale, 15 halvings reach the
# floor of 1, where one more skip stops the run anyway; after the scale has grown, 16 skips in a
# row mean it fell by 2^16 without one finite gradient: the weights, not the scale, are at fault.
MAX_SKIPS_IN_A_ROW = 16


class DynamicLossScale(tf.Module):
    """The loss scale S and its counters, as variables saved in the checkpoint.

    Create it under the strategy's scope. Every variable is written in cross-replica context by
    `update` with one verdict for all replicas, so the replicas' copies never differ.

    Args:
        initial_scale: S at the start (2^15).
        growth_interval: finite steps in a row after which S doubles (2000).
    """

    def __init__(self, initial_scale=INITIAL_SCALE, growth_interval=GROWTH_INTERVAL):
        super().__init__(name='loss_scale')
        self.growth_interval = growth_interval
        counter = dict(dtype=tf.int64, trainable=False,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.scale = tf.Variable(float(initial_scale), dtype=tf.float32, trainable=False,
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                                 name='scale')
        self.finite_in_a_row = tf.Variable(0, name='finite_in_a_row', **counter)
        self.skips_in_a_row = tf.Variable(0, name='skips_in_a_row', **counter)
        self.skipped = tf.Variable(0, name='skipped', **counter)

    def update(self, finite):
        """After one step's verdict: grow S after `growth_interval` finite steps, or halve it
        after a non-finite one. Call in cross-replica context.

        Args:
            finite: scalar bool, the same for every replica.
        Returns:
            An op that groups the assignments.
        """

        def after_finite():
            grow = self.finite_in_a_row + 1 >= self.growth_interval
            return tf.group(
                self.scale.assign(tf.where(grow, self.scale * 2.0, self.scale)),
                self.finite_in_a_row.assign(tf.where(grow, tf.constant(0, tf.int64),
                                                     self.finite_in_a_row + 1)),
                self.skips_in_a_row.assign(0))

        def after_skip():
            return tf.group(
                self.scale.assign(self.scale / 2.0),
                self.finite_in_a_row.assign(0),
                self.skips_in_a_row.assign_add(1),
                self.skipped.assign_add(1))

        return tf.cond(finite, after_finite, after_skip)

    def divergence(self):
        """Why the run must stop, or None: a step skipped at scale 1 or below (its loss or
        gradient is not finite even unscaled), or `MAX_SKIPS_IN_A_ROW` skips in a row."""
        skips = int(self.skips_in_a_row.numpy())
        if skips == 0:
            return None
        if float(self.scale.numpy()) < 1.0:  # halved from 1 or less
            return 'a non-finite loss or gradient at loss scale 1'
        if skips >= MAX_SKIPS_IN_A_ROW:
            return (f'{skips} float16 steps in a row had non-finite gradients (loss scale now '
                    f'{float(self.scale.numpy()):g})')
        return None

    def describe(self):
        """'loss scale 32768, 3 skipped' for the progress line."""
        return (f'loss scale {float(self.scale.numpy()):g}, '
                f'{int(self.skipped.numpy())} skipped')


def unscaled_gradients(tape, loss, variables, loss_scale):
    """The gradients of `loss` through the scaled backward pass, and whether they are finite.

    The backward pass starts from `scale` instead of 1 (the gradient of `scale * loss`), and the
    float32 gradients are divided by `scale` again. Call in a replica.

    Args:
        tape: the `GradientTape` that recorded `loss`.
        loss: scalar float32, this replica's share of the loss.
        variables: the float32 variables to differentiate.
        loss_scale: `DynamicLossScale`.
    Returns:
        (gradients, non_finite): the unscaled gradients, one per variable, and int32 1 when a
        gradient value or the loss is not finite, else 0 (summed over replicas by the caller).
    """
    scale = tf.convert_to_tensor(loss_scale.scale)
    gradients = tape.gradient(loss, variables, output_gradients=scale)
    gradients = [g / scale for g in gradients]
    finite = tf.reduce_all([tf.math.is_finite(loss)]
                           + [tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
    return gradients, tf.cast(tf.logical_not(finite), tf.int32)
