"""tf.data settings shared by every input pipeline of the library."""

from __future__ import annotations

import tensorflow as tf


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with no tf.data autotuning thread.

    Deleting a finished iterator (Keras makes a new validation one each epoch) waits for that thread, and it can
    miss the cancellation and sleep out its period: seconds, growing to a minute. Parallel map calls stay at
    min(16, cores) and prefetching adaptive without it.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
