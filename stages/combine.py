"""Stage combine: join the conv part and the fine-tuned dense part into one model, and evaluate it end to end on the
valid images, side by side with the original classifier."""

from vggbn.runner import stage


def run(paths, params):
    """Save conv part + fine-tuned dense part (`--out` `.keras` and `--weights` `.weights.h5`), then score the
    saved model and the original classifier side by side on the valid images; plot `confusion`: (actual,
    predicted) class names of the combined model, one row per image."""
    from vggbn.numerics import models
    from vggbn.cluster import distribute
    from vggbn.numerics.images import ImageInput
    from vggbn.numerics.scoring import Score
    from vggbn import console
    from vggbn.storage.manifest import read_classes, read_split
    from vggbn.storage.results import StageResult
    from vggbn.storage.tables import PlotTable

    inputs = ImageInput.from_params(params)
    original = models.load_model_file(paths.pretrained)
    combined = models.join(models.load_model_file(paths.conv), models.load_model_file(paths.dense),
                           name=f"{original.name}_bn")
    models.save_model(combined, paths.out)
    models.save_weights(combined, paths.weights)
    distribute.barrier()  # the file is written before any worker reads it
    saved = models.load_model_file(paths.out)  # evaluate what users get, not the object in memory
    manifest = read_split(paths.sample, "valid")
    classes = read_classes(paths.sample)
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
    return StageResult({**result, **distribute.describe()}, {"confusion": PlotTable(("actual", "predicted"), confusion)})


if __name__ == "__main__":
    stage.main(__doc__, run, runs_model=True, pretrained="the pretrained classifier (.keras)",
               conv="the conv part from insert_bn (.keras)", dense="the fine-tuned dense part (.keras)",
               sample="folder with the valid.tsv manifest", out="the combined model (.keras)",
               weights="its weights alone (.weights.h5)", metrics="JSON: loss and accuracy, combined and original",
               confusion="CSV: actual and predicted class of each valid image")
