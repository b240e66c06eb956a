"""`vggbn export`: the model as a SavedModel for serving, raw images in, with its classes and a model card."""

from __future__ import annotations

from vggbn.commands.common import (CARD_METRICS, check_model_file, class_labels, load_params, read_classes,
                                   headline_numbers)


def export_command(args) -> None:
    """`vggbn export`: the SavedModel, its classes and card, with the resize and preprocessing `predict` uses."""
    params = load_params(args.params)
    check_model_file(args.model)
    classes = read_classes(args.classes)

    from vggbn.numerics import images, models, serving

    model = models.load_model_file(args.model)
    labels = class_labels(classes, model.output_shape[-1], args.classes)
    inputs = images.ImageInput.from_params(params, root="")
    out = serving.export(model, args.out, resize=inputs.resize, preprocess=inputs.preprocess,
                         class_names=[cls for cls, _ in labels], metrics=headline_numbers(args.metrics, CARD_METRICS))
    print(f"{out}: SavedModel ({serving.ENCODED_SIGNATURE}: encoded images, {serving.PIXELS_SIGNATURE}: uint8 "
          f"arrays; {inputs.resize} to {'x'.join(map(str, models.input_size(model)))}, {inputs.preprocess}), "
          f"{len(labels)} classes, model card {out / serving.CARD}")


# --- info ---------------------------------------------------------------------------------------------------
