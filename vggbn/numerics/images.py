"""Decode, resize and preprocess images with TensorFlow ops, and a tf.data pipeline over a list of files.

Every function here works on tensors of any image size inside `tf.data` (graph mode), so decoding overlaps
with the model. Pixel values stay in 0-255 until `preprocess`, which applies the classifier's own convention.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import tensorflow as tf

from vggbn.choices import PREPROCESS_MODES, RESIZE_MODES
from vggbn.numerics.tfdata import without_autotune

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode 'caffe'
TORCH_MEAN = (0.485, 0.456, 0.406)  # mode 'torch', on RGB scaled to [0, 1]
TORCH_STD = (0.229, 0.224, 0.225)
DEFAULT_PREPROCESS = "caffe"  # the demo and VGG16 use Keras' VGG16 preprocessing (BGR, ImageNet mean)
CHECK_IMAGES = 256  # images on which end-to-end checks compare whole models: a bounded cost at any scale


def _check_choice(name: str, value, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"Expected `{name}` to be one of {', '.join(allowed)}. Received: {name}={value!r}")


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = size
        valid = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"Expected `size` to be (height, width), two integers >= 1. Received: size={size!r}")
    return int(height), int(width)


JPEG_SEGMENTS = 64  # segments walked from the start of a JPEG looking for EXIF (writers put it among the first)
EXIF_ENTRIES = 64  # IFD0 entries searched for the orientation tag (cameras write about 10-20)
EXIF_BATCH = 16  # encoded files a pipeline reads the orientation of at once
# Orientation (index) -> how to turn the stored pixels upright: transpose first, then reverse these axes.
# (Python values: a tensor made at import would start TensorFlow before a multi-worker strategy can be made.)
_TURN_PERMUTATION = [[0, 1, 2]] * 5 + [[1, 0, 2]] * 4
_TURN_REVERSED_AXES = [[False, False], [False, False], [False, True], [True, True], [True, False],
                       [False, False], [False, True], [True, True], [True, False]]

# Each op of a tf.data map costs every image 1-3 us, taken or not (an untaken branch passes dead tensors through
# each of its ops): 250 ops of EXIF parsing an image cost a 500x375 JPEG's decode 20%, a tf.switch_case of the
# eight turns 30%. So orientations are read a batch of files at once (ops on vectors cost what ops on scalars
# do), and turning is one branch of four ops.


def _read_bytes(data: tf.Tensor, at: tf.Tensor, length: int) -> tf.Tensor:
    """`length` bytes of each encoded file of `data` (n,) from offset `at` (n,) on: uint8 (n, length), zeros past
    the end."""
    at = tf.clip_by_value(at, 0, tf.cast(tf.strings.length(data), tf.int64))
    return tf.io.decode_raw(tf.strings.substr(data, at, tf.fill(tf.shape(at), tf.constant(length, tf.int64))),
                            tf.uint8, fixed_length=length)


def _unsigned(raw: tf.Tensor, little: tf.Tensor) -> tf.Tensor:
    """Bytes (..., k) as unsigned int64 (...), little-endian where `little` (broadcast to (...)) is true."""
    weights = tf.constant([256 ** i for i in range(raw.shape[-1])], tf.int64)
    return tf.reduce_sum(tf.cast(raw, tf.int64) * tf.where(little[..., None], weights, weights[::-1]), axis=-1)


def _exif_blocks(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Where each JPEG's EXIF TIFF block starts and its APP1 segment ends (int64 (n,) each; -1 where none), found by
    walking the segments from the start marker to the image data, as Pillow does."""
    is_jpeg = tf.reduce_all(tf.equal(_read_bytes(data, tf.zeros(tf.shape(data), tf.int64), 2), [0xFF, 0xD8]), -1)
    exif_id = tf.constant(list(b"Exif\x00\x00"), tf.uint8)

    def step(at, start, end, walking):
        segment = _read_bytes(data, at, 10)  # marker (2), length (2, big-endian, counting itself), identifier
        marker = segment[:, 1]
        length = _unsigned(segment[:, 2:4], tf.constant(False))
        is_exif = walking & tf.equal(marker, 0xE1) & tf.reduce_all(tf.equal(segment[:, 4:], exif_id), -1)
        start = tf.where(is_exif, at + 10, start)
        end = tf.where(is_exif, at + 2 + length, end)
        walking = (walking & ~is_exif & tf.equal(segment[:, 0], 0xFF) & (marker >= 0xC0) & (marker != 0xD9)
                   & (marker != 0xDA) & (length >= 2))  # not the image data (SOS), its end, or a damaged header
        return at + 2 + length, start, end, walking

    none = tf.fill(tf.shape(data), tf.constant(-1, tf.int64))
    _, start, end, _ = tf.while_loop(lambda *state: tf.reduce_any(state[-1]), step,
                                     (tf.fill(tf.shape(data), tf.constant(2, tf.int64)), none, none, is_jpeg),
                                     maximum_iterations=JPEG_SEGMENTS)
    return start, end


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8) of each encoded image of `data` (any shape) as int32 of that shape: 1 (as stored)
    where a file is no JPEG, has no EXIF or no orientation, or its EXIF is damaged.

    Read with tensor ops (JPEG segments to the APP1 "Exif" one, its TIFF header, then IFD0's 12-byte entries for tag
    0x0112), so it runs inside tf.data; all files of `data` are read at once.
    """
    data = tf.convert_to_tensor(data, tf.string)
    flat = tf.reshape(data, [-1])
    start, end = _exif_blocks(flat)
    header = _read_bytes(flat, start, 8)  # byte order "II" or "MM", 42, offset of IFD0
    little = tf.equal(header[:, 0], ord("I"))
    valid = ((start >= 0) & tf.equal(header[:, 0], header[:, 1]) & (little | tf.equal(header[:, 0], ord("M")))
             & tf.equal(_unsigned(header[:, 2:4], little), 42))
    ifd = start + _unsigned(header[:, 4:8], little)
    table = _read_bytes(flat, ifd, 2 + 12 * EXIF_ENTRIES)  # entry count, then entries: tag, type, count, value
    entries = tf.reshape(table[:, 2:], [-1, EXIF_ENTRIES, 12])
    entry_end = ifd[:, None] + 2 + 12 * tf.range(1, EXIF_ENTRIES + 1, dtype=tf.int64)
    is_orientation = ((tf.range(EXIF_ENTRIES, dtype=tf.int64) < _unsigned(table[:, :2], little)[:, None])
                      & (entry_end <= end[:, None]) & tf.equal(_unsigned(entries[..., 0:2], little[:, None]), 0x0112))
    kind = _unsigned(entries[..., 2:4], little[:, None])  # SHORT (3) as the standard says; LONG (4) Pillow reads too
    value = tf.where(tf.equal(kind, 3), _unsigned(entries[..., 8:10], little[:, None]),
                     tf.where(tf.equal(kind, 4), _unsigned(entries[..., 8:12], little[:, None]), 0))
    value = tf.reduce_max(tf.where(is_orientation, value, 0), axis=1)
    orientation = tf.where(valid & (value >= 1) & (value <= 8), value, 1)
    return tf.reshape(tf.cast(orientation, tf.int32), tf.shape(data))


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn a decoded image (h, w, c) as its EXIF `orientation` says, so it shows upright (Pillow's
    `ImageOps.exif_transpose`): 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
    8 rotate 90 counter-clockwise; 1 (or anything else) as is."""
    orientation = tf.clip_by_value(orientation, 0, 8)
    turned = tf.transpose(image, tf.gather(_TURN_PERMUTATION, orientation))
    return tf.reverse(turned, tf.where(tf.gather(_TURN_REVERSED_AXES, orientation))[:, 0])


def decode(data: tf.Tensor, orientation: tf.Tensor | None = None) -> tf.Tensor:
    """Decode an encoded image (JPEG, PNG, GIF, BMP, whatever its file name says) to uint8 RGB (h, w, 3), upright.

    Grayscale and CMYK JPEGs become RGB, an alpha channel is dropped, a palette is expanded, 16-bit PNG samples
    are scaled to 8 bits (65535 -> 255, not truncated) and an animated GIF gives its first frame. A JPEG's EXIF
    orientation (phones store portrait photos sideways and say so there) is applied: `orientation` where given
    (`exif_orientation` of a batch of files, read beforehand), read from `data` otherwise. A corrupt or truncated
    file raises `tf.errors.InvalidArgumentError` when the tensor is evaluated.
    """
    image = tf.ensure_shape(tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
                            [None, None, 3])
    orientation = exif_orientation(data) if orientation is None else orientation
    image = tf.cond(orientation > 1, lambda: apply_orientation(image, orientation), lambda: image)
    return tf.ensure_shape(image, [None, None, 3])


def _resize_to(image: tf.Tensor, height, width) -> tf.Tensor:
    return tf.image.resize(image, tf.stack([height, width]), method="bilinear")


def _scaled_side(side: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.round(tf.cast(side, tf.float32) * scale), tf.int32)


def resize(image: tf.Tensor, size: tuple[int, int], mode: str) -> tf.Tensor:
    """Bring an image (h, w, 3) of any size to float32 `size` = (height, width) with values in 0-255.

    Args:
        image: (h, w, 3) tensor, uint8 or float.
        size: (height, width) of the result.
        mode: one of
            - `squash`: resize to `size`, ignoring the aspect ratio (Keras' default, and the 2017 notebook's);
            - `center_crop`: scale so the image covers `size` (the shorter side to its target), then keep the
              centre (torchvision's evaluation transform);
            - `pad`: scale so the image fits inside `size`, centred, with black borders (letterbox).
        All use bilinear interpolation (TensorFlow's half-pixel centres, no antialiasing).
    """
    _check_choice("resize", mode, RESIZE_MODES)
    height, width = _check_size(size)
    image = tf.convert_to_tensor(image)
    if mode == "squash":
        out = _resize_to(image, height, width)
    else:
        shape = tf.shape(image)
        scale_h = height / tf.cast(shape[0], tf.float32)
        scale_w = width / tf.cast(shape[1], tf.float32)
        if mode == "center_crop":
            scale = tf.maximum(scale_h, scale_w)
            new_h = tf.maximum(height, _scaled_side(shape[0], scale))
            new_w = tf.maximum(width, _scaled_side(shape[1], scale))
            out = tf.image.crop_to_bounding_box(_resize_to(image, new_h, new_w), (new_h - height) // 2,
                                                (new_w - width) // 2, height, width)
        else:  # pad
            scale = tf.minimum(scale_h, scale_w)
            new_h = tf.clip_by_value(_scaled_side(shape[0], scale), 1, height)
            new_w = tf.clip_by_value(_scaled_side(shape[1], scale), 1, width)
            out = tf.image.pad_to_bounding_box(_resize_to(image, new_h, new_w), (height - new_h) // 2,
                                               (width - new_w) // 2, height, width)
    return tf.ensure_shape(tf.cast(out, tf.float32), [height, width, 3])


def preprocess(images, mode: str) -> tf.Tensor:
    """Keras' `imagenet_utils.preprocess_input` (channels last) as float32 tensor ops; never modifies `images`.

    Args:
        images: RGB values in 0-255, shape (..., 3), a tensor or an array.
        mode: `caffe` (RGB to BGR, then subtract the ImageNet mean per channel: VGG16, ResNet50), `tf` (scale to
            [-1, 1]), `torch` (scale to [0, 1], then normalize by ImageNet's mean and std) or `none` (as is).
    """
    _check_choice("preprocess", mode, PREPROCESS_MODES)
    x = tf.cast(images, tf.float32)
    if mode == "caffe":
        return x[..., ::-1] - tf.constant(CAFFE_MEAN_BGR, tf.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - tf.constant(TORCH_MEAN, tf.float32)) / tf.constant(TORCH_STD, tf.float32)
    return x


def model_input(image: tf.Tensor, size: tuple[int, int], resize_mode: str, preprocess_mode: str,
                flip: bool = False) -> tf.Tensor:
    """A decoded, upright image (h, w, 3) as the model takes it: resized, optionally mirrored left-right,
    preprocessed; float32 (height, width, 3). The pipeline's and the served model's one way."""
    image = resize(image, size, resize_mode)
    if flip:
        image = tf.image.flip_left_right(image)
    return preprocess(image, preprocess_mode)


def load_image(path: tf.Tensor, size: tuple[int, int], resize_mode: str, preprocess_mode: str,
               flip: bool = False) -> tf.Tensor:
    """Read, decode, resize, optionally mirror left-right, and preprocess one image file: float32 (h, w, 3)."""
    return model_input(decode(tf.io.read_file(path)), size, resize_mode, preprocess_mode, flip)


def image_dataset(paths: Sequence[str | os.PathLike], size: tuple[int, int], resize: str, preprocess: str,
                  batch_size: int, flip: bool = False, labels: Sequence | None = None) -> tf.data.Dataset:
    """Batches of preprocessed images (float32, (n, height, width, 3)) in the order of `paths`.

    Files are read and decoded in parallel, in order; the last batch may be smaller; batches are prefetched. With
    `flip`, every image is mirrored left-right (make flipped copies with a second dataset). With `labels`
    (one per path), the dataset yields (images, labels) pairs. Arguments are checked before any work.
    """
    _check_choice("resize", resize, RESIZE_MODES)
    _check_choice("preprocess", preprocess, PREPROCESS_MODES)
    size = _check_size(size)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be an integer >= 1. Received: batch_size={batch_size!r}")
    files = tf.constant([os.fspath(p) for p in paths], dtype=tf.string, shape=[len(paths)])
    if labels is None:
        columns = (files,)
    else:
        labels = np.asarray(labels)
        if len(labels) != len(paths):
            raise ValueError(f"Expected one label per path. Received: {len(labels)} labels for {len(paths)} paths")
        columns = (files, labels)

    def read(path, *label):
        return (tf.io.read_file(path), *label)

    def with_orientation(data, *label):  # a batch of files at once: see EXIF_BATCH
        return (data, exif_orientation(data), *label)

    def load(data, orientation, *label):
        image = model_input(decode(data, orientation), size, resize, preprocess, flip)
        return (image, *label) if label else image

    dataset = (tf.data.Dataset.from_tensor_slices(columns)
               .map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(EXIF_BATCH).map(with_orientation).unbatch()
               .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    return without_autotune(dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def load_batch(paths: Sequence[str | os.PathLike], size: tuple[int, int], resize: str, preprocess: str, *,
               flip: bool = False, batch_size: int = 64) -> np.ndarray:
    """All of `paths` as one float32 array (n, height, width, 3): for small sets (the demo, tests, the CLI)."""
    height, width = _check_size(size)
    batches = [batch.numpy() for batch in image_dataset(paths, size=(height, width), resize=resize,
                                                         preprocess=preprocess, batch_size=batch_size, flip=flip)]
    return np.concatenate(batches) if batches else np.zeros((0, height, width, 3), np.float32)


@dataclass(frozen=True)
class ImageInput:
    """How image files reach a model: the folder their paths are relative to, the batch size, and the resize and
    preprocessing modes. Built once from the params and passed whole to every stage that reads images."""
    root: str
    batch_size: int
    resize: str
    preprocess: str

    @classmethod
    def from_params(cls, params, root: str | None = None) -> "ImageInput":
        """From `data.root` (or `root`), `features.batch_size`, `features.resize` and `model.preprocess` (null: the
        demo's and VGG16's own, caffe)."""
        preprocess = params.model.preprocess if params.model.preprocess is not None else DEFAULT_PREPROCESS
        return cls(root=params.data.root if root is None else root, batch_size=params.features.batch_size,
                   resize=params.features.resize, preprocess=preprocess)

    def files(self, paths: Sequence[str]) -> list[str]:
        """`paths` (relative to the root, or absolute) as paths to open."""
        return [os.path.join(self.root, p) for p in paths]

    def dataset(self, paths: Sequence[str], size: tuple[int, int], *, flip: bool = False,
                labels: Sequence | None = None) -> tf.data.Dataset:
        """`image_dataset` over `paths` relative to the root, with these settings."""
        return image_dataset(self.files(paths), size=size, resize=self.resize, preprocess=self.preprocess,
                             batch_size=self.batch_size, flip=flip, labels=labels)
