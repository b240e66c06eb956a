"""A SavedModel for serving that carries the pipeline's resize and preprocessing, and its model card.

The combined model expects images already resized to its input size and preprocessed its own way (caffe: BGR, the
ImageNet mean subtracted); fed RGB pixels it answers with confident nonsense. The export's signatures take what a
client has instead, encoded image files or uint8 RGB arrays of any size, and apply the very ops `vggbn predict`
applies (`vggbn.numerics.images`), so both give the same probabilities. TF Serving, Vertex AI, SageMaker and
`tf.saved_model.load` all take it.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import keras
import tensorflow as tf

from vggbn.numerics import images, models
from vggbn.storage.atomic import atomic_path

ENCODED_SIGNATURE = "serving_default"  # the first endpoint: what TF Serving calls by default
PIXELS_SIGNATURE = "serve_pixels"
CARD = "README.md"
CLASSES = "classes.txt"
VERSIONS = ("vggbn", "tensorflow", "keras", "numpy")


def serving_functions(model: keras.Model, *, resize: str, preprocess: str, class_names: list[str]):
    """(encoded images -> answers, uint8 arrays -> answers): each answer a dict of `probabilities` (n, classes),
    `class_index` (n,) and `class_name` (n,), the top class."""
    size = models.input_size(model)
    images.resize(tf.zeros((1, 1, 3)), size, resize)  # a bad mode fails here, before tracing
    images.preprocess(tf.zeros((1, 3)), preprocess)
    names = tf.constant(class_names, tf.string)
    prepared = tf.TensorSpec((*size, 3), tf.float32)

    def prepare(image):
        return images.model_input(image, size, resize, preprocess)

    def answer(batch):
        probabilities = tf.cast(model(batch, training=False), tf.float32)
        top = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_index": top, "class_name": tf.gather(names, top)}

    def from_encoded(encoded):
        orientations = images.exif_orientation(encoded)  # the whole batch's at once
        return answer(tf.map_fn(lambda pair: prepare(images.decode(*pair)), (encoded, orientations),
                                fn_output_signature=prepared))

    def from_pixels(pixels):
        return answer(tf.map_fn(prepare, pixels, fn_output_signature=prepared))

    return from_encoded, from_pixels


def export(model: keras.Model, out: str | os.PathLike, *, resize: str, preprocess: str,
           class_names: list[str] | None = None, metrics: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write the folder `out` atomically: the SavedModel (signatures `serving_default`, a batch of encoded images
    (JPEG, PNG, GIF, BMP) as strings, and `serve_pixels`, a batch of uint8 RGB arrays (n, h, w, 3) of any h and w),
    `classes.txt` and the model card `README.md` (`metrics`: {stage: {key: value}} of the run, quoted in it)."""
    outputs = model.output_shape[-1]
    class_names = [str(i) for i in range(outputs)] if class_names is None else list(class_names)
    if len(class_names) != outputs:
        raise models.ModelError(f"{len(class_names)} class names for a model of {outputs} outputs")
    from_encoded, from_pixels = serving_functions(model, resize=resize, preprocess=preprocess, class_names=class_names)
    archive = keras.export.ExportArchive()
    archive.track(model)
    encoded = tf.TensorSpec((None,), tf.string, name="images")
    pixels = tf.TensorSpec((None, None, None, 3), tf.uint8, name="pixels")
    archive.add_endpoint(ENCODED_SIGNATURE, from_encoded, input_signature=[encoded])  # the first: TF Serving's default
    archive.add_endpoint(PIXELS_SIGNATURE, from_pixels, input_signature=[pixels])
    out = Path(out)
    with atomic_path(out) as tmp:
        archive.write_out(str(tmp), verbose=False)
        (tmp / CLASSES).write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
        (tmp / CARD).write_text(model_card(model, resize=resize, preprocess=preprocess, class_names=class_names,
                                           metrics=metrics or {}), encoding="utf-8")
    return out


def _versions() -> str:
    found = []
    for name in VERSIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found + [f"Python {platform.python_version()}"])


def _figure(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) and abs(value) < 1e-3 else (
        f"{value:.4f}" if isinstance(value, float) else str(value))


def model_card(model: keras.Model, *, resize: str, preprocess: str, class_names: list[str],
               metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The export's README.md: what it eats and answers, how it got there, and with which versions."""
    height, width = models.input_size(model)
    bn = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    lines = [f"# {model.name}: a vggbn export", "",
             f"A Keras classifier of {len(class_names)} classes with {len(bn)} calibrated BatchNormalization "
             f"layer{'s' if len(bn) != 1 else ''} ({', '.join(bn) or 'none'}), as a TensorFlow SavedModel.", "",
             "## Input", "",
             f"- `{ENCODED_SIGNATURE}`: `images`, a batch of encoded image files (JPEG, PNG, GIF, BMP) as strings "
             "(shape `(n,)`), each of any size;",
             f"- `{PIXELS_SIGNATURE}`: `pixels`, a batch of uint8 RGB arrays (shape `(n, h, w, 3)`, any h and w).", "",
             "## Preprocessing (inside the model: send raw images)", "",
             f"Decoded to RGB, resized to {height}x{width} with `{resize}` (bilinear), then preprocessed with "
             f"`{preprocess}`" + {"caffe": " (RGB to BGR, the ImageNet mean subtracted per channel)",
                                   "tf": " (scaled to [-1, 1])", "torch": " (scaled to [0, 1], ImageNet mean and std)",
                                   "none": " (values as they are, 0-255)"}.get(preprocess, "") + ".", "",
             "## Output", "",
             "`probabilities` (n, classes), `class_index` and `class_name` of the top class. Classes, in output "
             f"order (also in `{CLASSES}`): " + ", ".join(f"`{name}`" for name in class_names[:50])
             + (f" and {len(class_names) - 50} more" if len(class_names) > 50 else "") + ".", "",
             "## Use", "",
             "```python",
             "import tensorflow as tf",
             "served = tf.saved_model.load(\"<this folder>\")",
             "photo = open(\"photo.jpg\", \"rb\").read()",
             f"answer = served.signatures[\"{ENCODED_SIGNATURE}\"](images=tf.constant([photo]))",
             "answer[\"probabilities\"], answer[\"class_name\"]",
             "```", ""]
    figures = [f"- `{stage}.{key}`: {_figure(value)}" for stage, values in metrics.items()
               for key, value in values.items()]
    if figures:
        lines += ["## The run that made it", "",
                  "`insert_bn.max_abs_diff` is the largest change of any output probability that inserting BN made "
                  "(the identity check); accuracies are on the run's validation images.", "", *figures, ""]
    lines += ["## Made with", "", _versions() + f" ({sys.platform})", ""]
    return "\n".join(lines)
