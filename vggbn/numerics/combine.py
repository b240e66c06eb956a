"""Join the conv part and the fine-tuned dense part into one model, and evaluate it end to end on images; the
combine stage."""

from __future__ import annotations

from vggbn.runner import console
from vggbn.numerics import distribute, models
from vggbn.storage.atomic import atomic_path
from vggbn.storage.files import StageResult, Table
from vggbn.numerics.images import ImageInput
from vggbn.storage.manifest import read_classes, read_split
from vggbn.numerics.scoring import Score


def run_combine(*, pretrained_path, conv_path, dense_path, sample_dir, inputs: ImageInput, out_path,
                weights_path) -> StageResult:
    """Save conv part + fine-tuned dense part (`.keras` and `.weights.h5`), then score the saved model and the
    original classifier side by side on the valid images; plot `confusion`: (actual, predicted) class names of the
    combined model, one row per image."""
    original = models.load_model_file(pretrained_path)
    combined = models.join(models.load_model_file(conv_path), models.load_model_file(dense_path),
                           name=f"{original.name}_bn")
    models.save_model(combined, out_path)
    if distribute.is_chief():  # the chief alone writes
        with atomic_path(weights_path) as tmp:
            combined.save_weights(tmp)
    distribute.barrier()  # the file is written before any worker reads it
    saved = models.load_model_file(out_path)  # evaluate what users get, not the object in memory
    manifest = read_split(sample_dir, "valid")
    classes = read_classes(sample_dir)
    to_output = models.label_map(classes, saved.output_shape[-1])
    names = models.output_names(classes, saved.output_shape[-1])
    dataset = inputs.dataset(manifest.paths, models.input_size(saved),
                             labels=[to_output[label] for label in manifest.labels])
    scores = {"combined": Score(), "original": Score()}
    combined_model, original_model = models.predictor(saved), models.predictor(original)
    confusion = []
    batches = console.tracked(dataset, len(manifest.paths), "scoring valid images", "img", size=lambda b: len(b[1]))
    for batch, batch_labels in batches:
        p_combined, batch_labels = combined_model(batch), batch_labels.numpy()
        scores["combined"].add(p_combined, batch_labels)
        scores["original"].add(original_model(batch), batch_labels)
        confusion.extend((names[a], names[p]) for a, p in zip(batch_labels, p_combined.argmax(axis=1)))
    result = {"images": scores["combined"].count}
    for name, score in scores.items():
        result.update({f"{name}_{key}": value for key, value in score.result().items()})
    return StageResult({**result, **distribute.describe()}, {"confusion": Table(("actual", "predicted"), confusion)})
