"""Join the conv part and the fine-tuned dense part into one model, and evaluate it end to end on images."""

from __future__ import annotations

from pathlib import Path

import keras

from vggbn import features, images, models
from vggbn.atomic import atomic_path
from vggbn.scoring import Score


def combine(*, pretrained_path, dense_path, valid_features, sample_dir, root, out_path, weights_path,
            batch_size: int, resize: str, preprocess: str) -> dict:
    """Save conv part + fine-tuned dense part (`.keras` and `.weights.h5`), then score the saved model and the
    original classifier side by side on the valid images, in one pass through the conv layers."""
    from vggbn.extract import read_classes
    from vggbn.sample import read_manifest

    original = models.load_model_file(pretrained_path)
    cut = features.feature_cut(valid_features)
    conv, original_dense = models.split(original, cut)
    combined = models.join(conv, models.load_model_file(dense_path), name=f"{original.name}_bn")
    models.save_model(combined, out_path)
    with atomic_path(weights_path) as tmp:
        combined.save_weights(tmp)

    saved = models.load_model_file(out_path)  # evaluate what users get, not the object in memory
    both = keras.Model(saved.input, [saved.output, original_dense(saved.get_layer(cut).output)])
    manifest = read_manifest(Path(sample_dir) / "valid.tsv")
    to_output = models.label_map(read_classes(sample_dir), saved.output_shape[-1])
    dataset = images.image_dataset([str(Path(root) / p) for p in manifest.paths], size=models.input_size(saved),
                                   resize=resize, preprocess=preprocess, batch_size=batch_size)
    scores, start = {"combined": Score(), "original": Score()}, 0
    for batch in dataset:
        p_combined, p_original = both.predict_on_batch(batch)
        labels = [to_output[label] for label in manifest.labels[start:start + len(p_combined)]]
        scores["combined"].add(p_combined, labels)
        scores["original"].add(p_original, labels)
        start += len(p_combined)
    result = {"images": scores["combined"].count}
    for name, score in scores.items():
        result.update({f"{name}_{key}": value for key, value in score.result().items()})
    return result
