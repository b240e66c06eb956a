"""Join the conv part and the fine-tuned dense part into one model, and evaluate it end to end on images."""

from __future__ import annotations

from vggbn import images, models
from vggbn.atomic import atomic_path
from vggbn.scoring import Score


def combine(*, pretrained_path, conv_path, dense_path, sample_dir, root, out_path, weights_path,
            batch_size: int, resize: str, preprocess: str, confusion: list | None = None) -> dict:
    """Save conv part + fine-tuned dense part (`.keras` and `.weights.h5`), then score the saved model and the
    original classifier side by side on the valid images. `confusion` receives (actual, predicted) class names
    of the combined model, one per image."""
    from vggbn.extract import read_classes, read_manifest_paths

    original = models.load_model_file(pretrained_path)
    combined = models.join(models.load_model_file(conv_path), models.load_model_file(dense_path),
                           name=f"{original.name}_bn")
    models.save_model(combined, out_path)
    with atomic_path(weights_path) as tmp:
        combined.save_weights(tmp)

    saved = models.load_model_file(out_path)  # evaluate what users get, not the object in memory
    paths, labels = read_manifest_paths(sample_dir, "valid", root, labels=True)
    classes = read_classes(sample_dir)
    to_output = models.label_map(classes, saved.output_shape[-1])
    names = models.output_names(classes, saved.output_shape[-1])
    dataset = images.image_dataset(paths, size=models.input_size(saved), resize=resize, preprocess=preprocess,
                                   batch_size=batch_size, labels=[to_output[label] for label in labels])
    scores = {"combined": Score(), "original": Score()}
    for batch, batch_labels in dataset:
        p_combined, batch_labels = saved.predict_on_batch(batch), batch_labels.numpy()
        scores["combined"].add(p_combined, batch_labels)
        scores["original"].add(original.predict_on_batch(batch), batch_labels)
        if confusion is not None:
            confusion.extend((names[a], names[p]) for a, p in zip(batch_labels, p_combined.argmax(axis=1)))
    result = {"images": scores["combined"].count}
    for name, score in scores.items():
        result.update({f"{name}_{key}": value for key, value in score.result().items()})
    return result
