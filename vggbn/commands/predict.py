"""`vggbn predict`: the top-K classes of images, resized and preprocessed as the pipeline does."""

from __future__ import annotations

import json
import os
import sys

from vggbn.commands.common import CliError, check_model_file, class_labels, load_params, read_classes


def _check_top(top: int) -> None:
    if top < 1:
        raise CliError(f"--top: expected an integer >= 1, got {top}")


def _check_images(paths: list[str]) -> None:
    """Each image must be a file that Pillow decodes fully, in a format TensorFlow reads (the sample's checks)."""
    from vggbn.storage.sampling import check_image

    for path in paths:
        if not os.path.lexists(path):
            raise CliError(f"{path}: no such image file")
        reason = check_image(path).reason
        if reason is not None:
            raise CliError(f"{path}: cannot use this image: {reason}")


# --- predict ------------------------------------------------------------------------------------------------

def top_k(probabilities, k: int) -> list[int]:
    """Indices of the k largest values, largest first; ties keep output order."""
    import numpy as np

    return [int(i) for i in np.argsort(-np.asarray(probabilities), kind="stable")[:k]]


def predict(args) -> None:
    _check_top(args.top)
    params = load_params(args.params)
    _check_images(args.images)
    check_model_file(args.model)
    classes = read_classes(args.classes)

    import tensorflow as tf

    from vggbn.numerics import images, models

    model = models.load_model_file(args.model)
    size = models.input_size(model)
    shape = model.output_shape
    if not (isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[-1], int)):
        raise CliError(f"{args.model}: expected one output of class probabilities, got {shape}")
    labels = class_labels(classes, shape[-1], args.classes)
    k = min(args.top, len(labels))
    inputs = images.ImageInput.from_params(params, root="")
    resize, preprocess = inputs.resize, inputs.preprocess
    dataset = inputs.dataset(args.images, size)
    width = max(len(_label(c, n)) for c, n in labels)
    results, done, run_model = [], 0, models.predictor(model)
    try:
        for batch in dataset:
            for probabilities in run_model(batch):
                path = args.images[done]
                done += 1
                rows = [(rank, index, *labels[index], float(probabilities[index]))
                        for rank, index in enumerate(top_k(probabilities, k), start=1)]
                if args.json:
                    results.append({"path": path, "predictions": [
                        {"rank": rank, "index": index, "class": cls, "name": name, "probability": p}
                        for rank, index, cls, name, p in rows]})
                else:
                    print(("\n" if done > 1 else "") + path)
                    for rank, _, cls, name, p in rows:
                        print(f"{rank:>4}  {_label(cls, name):<{width}}  {p:.4f}")
                    sys.stdout.flush()
    except tf.errors.OpError as error:  # Pillow read it but TensorFlow does not: name the file
        culprit = _undecodable(args.images[done:], size, resize, preprocess) or "one of the images"
        raise CliError(f"{culprit}: TensorFlow cannot decode it: {str(error.message).splitlines()[0]}") from None
    if args.json:
        json.dump({"model": args.model, "resize": resize, "preprocess": preprocess, "input_size": list(size),
                   "top": k, "images": results}, sys.stdout, indent=2)
        print()


def _undecodable(paths: list[str], size, resize: str, preprocess: str) -> str | None:
    import tensorflow as tf

    from vggbn.numerics import images

    for path in paths:
        try:
            images.load_image(tf.constant(path), size, resize, preprocess)
        except tf.errors.OpError:
            return path
    return None


def _label(cls: str, name: str | None) -> str:
    return f"{cls} {name}" if name else cls


# --- export -------------------------------------------------------------------------------------------------
