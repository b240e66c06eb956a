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


EXIF_SEARCH_BYTES = 65536  # a JPEG's EXIF block (APP1) comes right after its start marker
EXIF_ENTRIES = 64  # IFD0 entries searched for the orientation tag (cameras write about 10-20)


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8) of an encoded JPEG as int32, 1 (as stored) when it has none or it is damaged.

    Parsed with tensor ops (TIFF header, then IFD0's 12-byte entries for tag 0x0112), so it runs inside tf.data.
    """
    parts = tf.strings.split(tf.strings.substr(data, 0, EXIF_SEARCH_BYTES), sep=b"Exif\x00\x00", maxsplit=1)
    tiff = tf.cond(tf.size(parts) > 1, lambda: parts[-1], lambda: tf.constant(b""))
    length = 8 + 2 + 12 * EXIF_ENTRIES
    padded = tf.strings.substr(tf.strings.join([tiff, tf.constant(b"\x00" * length)]), 0, length)
    raw = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int32)
    little = tf.equal(raw[0], ord("I"))

    def u16(at):
        at = tf.clip_by_value(at, 0, length - 2)
        first, second = tf.gather(raw, at), tf.gather(raw, at + 1)
        return tf.where(little, first + 256 * second, 256 * first + second)

    ifd = tf.where(little, u16(tf.constant(4)) + 65536 * u16(tf.constant(6)),
                   65536 * u16(tf.constant(4)) + u16(tf.constant(6)))
    count = u16(ifd)
    starts = ifd + 2 + 12 * tf.range(EXIF_ENTRIES)
    found = (tf.range(EXIF_ENTRIES) < count) & tf.equal(u16(starts), 0x0112) & (starts + 12 <= length)
    value = tf.reduce_max(tf.where(found, u16(starts + 8), 0))
    valid = tf.reduce_any(found) & (value >= 1) & (value <= 8) & (raw[0] == raw[1])  # "II" or "MM"
    return tf.where(valid & tf.reduce_any(tf.equal(raw[0], [ord("I"), ord("M")])), value, 1)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn a decoded image (h, w, c) as its EXIF `orientation` says, so it shows upright (Pillow's
    `ImageOps.exif_transpose`): 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
    8 rotate 90 counter-clockwise."""
    branches = [lambda: image, lambda: image, lambda: tf.image.flip_left_right(image),
                lambda: tf.image.rot90(image, 2), lambda: tf.image.flip_up_down(image),
                lambda: tf.image.transpose(image), lambda: tf.image.rot90(image, 3),
                lambda: tf.image.rot90(tf.image.transpose(image), 2), lambda: tf.image.rot90(image, 1)]
    return tf.switch_case(tf.clip_by_value(orientation, 0, 8), branches)


def decode(data: tf.Tensor) -> tf.Tensor:
    """Decode an encoded image (JPEG, PNG, GIF, BMP, whatever its file name says) to uint8 RGB (h, w, 3), upright.

    Grayscale and CMYK JPEGs become RGB, an alpha channel is dropped, a palette is expanded, 16-bit PNG samples
    are scaled to 8 bits (65535 -> 255, not truncated) and an animated GIF gives its first frame. A JPEG's EXIF
    orientation (phones store portrait photos sideways and say so there) is applied. A corrupt or truncated file
    raises `tf.errors.InvalidArgumentError` when the tensor is evaluated.
    """
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image = apply_orientation(tf.ensure_shape(image, [None, None, 3]), exif_orientation(data))
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


def load_image(path: tf.Tensor, size: tuple[int, int], resize_mode: str, preprocess_mode: str,
               flip: bool = False) -> tf.Tensor:
    """Read, decode, resize, optionally mirror left-right, and preprocess one image file: float32 (h, w, 3)."""
    image = resize(decode(tf.io.read_file(path)), size, resize_mode)
    if flip:
        image = tf.image.flip_left_right(image)
    return preprocess(image, preprocess_mode)


def image_dataset(paths: Sequence[str | os.PathLike], size: tuple[int, int], resize: str, preprocess: str,
                  batch_size: int, flip: bool = False, labels: Sequence | None = None) -> tf.data.Dataset:
    """Batches of preprocessed images (float32, (n, height, width, 3)) in the order of `paths`.

    Files are decoded in parallel, in order; the last batch may be smaller; batches are prefetched. With
    `flip`, every image is mirrored left-right (make flipped copies with a second dataset). With `labels`
    (one per path), the dataset yields (images, labels) pairs. Arguments are checked before any work.
    """
    _check_choice("resize", resize, RESIZE_MODES)
    _check_choice("preprocess", preprocess, PREPROCESS_MODES)
    size = _check_size(size)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be an integer >= 1. Received: batch_size={batch_size!r}")
    files = tf.constant([os.fspath(p) for p in paths], dtype=tf.string, shape=[len(paths)])

    def load(path):
        return load_image(path, size, resize, preprocess, flip)

    if labels is None:
        dataset = tf.data.Dataset.from_tensor_slices(files).map(
            load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        labels = np.asarray(labels)
        if len(labels) != len(paths):
            raise ValueError(f"Expected one label per path. Received: {len(labels)} labels for {len(paths)} paths")
        dataset = tf.data.Dataset.from_tensor_slices((files, labels)).map(
            lambda path, label: (load(path), label), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
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
