"""Adam whose update is TensorFlow's fused kernel: one pass over each variable instead of about a dozen.

Keras' `Adam.update_step` is a chain of elementwise ops (`g - m`, `* (1 - beta_1)`, `m += ...`, `g * g`, ...,
`sqrt(v) + epsilon`, `var -= ...`), each one streaming whole tensors through memory and allocating a temporary of
the variable's size. On VGG16's dense part (124M fp32 weights) that chain, not the matmuls, dominates a training
step at small batches. `FusedAdam` hands the same arithmetic to `tf.raw_ops.ResourceApplyAdam`, which reads the
variable, its gradient and both slots once and writes the variable and the slots in place: the least memory
traffic an Adam update can have.

It is Keras' Adam in every other respect (it subclasses `keras.optimizers.Adam`): the same slot variables
(`momentum`, `velocity`), the same learning rate (float or schedule), bias correction and epsilon placement, weight
decay, clipping, EMA, loss scaling and gradient accumulation (all done by Keras around `update_step`), the same
config, so a `.keras` file saved with it loads it back with its slots; and under a `tf.distribute` strategy each
replica's copy of a variable is updated in place, as Keras' own update does. AMSGrad, sparse gradients and dtypes
the kernel does not take fall back to Keras' update.

One numerical difference, in the last bits: the kernel forms `1 - beta_1` and `1 - beta_2` in float32 from the
float32 betas, where Keras forms them in Python floats and rounds the result. With the default `beta_2 = 0.999`,
`1 - float32(0.999)` is 0.00099998713 instead of 0.001 (1.3e-5 relative): FusedAdam is bit for bit Keras' Adam
with `beta_1` and `beta_2` rounded to float32 first (`float(numpy.float32(0.999))`), and within about 1e-5 of
Keras' default Adam in its `velocity` slot, far less in the weights. The kernel is elementwise, so it is
deterministic run to run.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _tf_variable(variable):
    """The tf.Variable behind a Keras variable (a tf.Variable itself is returned as is)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


@keras.saving.register_keras_serializable(package="vggbn")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` with its update fused into TensorFlow's `ResourceApplyAdam` kernel: same arguments,
    same slots and config; a drop-in replacement (`FusedAdam(learning_rate=1e-4)`)."""

    def update_step(self, gradient, variable, learning_rate):
        var = _tf_variable(variable)
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices) or var.dtype not in _FUSED_DTYPES:
            return super().update_step(gradient, variable, learning_rate)
        dtype = var.dtype
        index = self._get_variable_index(variable)
        m = _tf_variable(self._momentums[index])
        v = _tf_variable(self._velocities[index])
        # As Keras' Adam: the step counted from 1, beta powers in the variable's dtype.
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=var.handle, m=m.handle, v=v.handle,
            beta1_power=tf.pow(beta_1, local_step), beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype), use_locking=False, use_nesterov=False)
