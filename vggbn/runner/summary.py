"""The one line each stage logs when it is done, read off the metrics its library entry returned.

One formatter per stage script, in one table, so a run reads the same from stage to stage:

    conv_features: train 1,011 rows (1,011 computed, 0 reused, 0 resumed), valid 253 (...); dense-on-features diff 0
    insert_bn: 2 BN layers, max_abs_diff 1.2e-07 (logits 3.8e-06), accuracy 0.9921 -> 0.9921

Only words and numbers that are already computed: nothing here can change a result, so this module is no stage's
DVC dependency (tests/test_dvc_yaml.py keeps the allow-list) and rewording a summary reruns nothing.
"""

from __future__ import annotations

from typing import Callable


def _count(value: int) -> str:
    return f"{value:,}"


def _accuracy(value: float) -> str:
    return f"{value:.4f}"


def _small(value: float) -> str:
    """A difference or a loss: short, exact zero kept as 0."""
    return "0" if value == 0 else f"{value:.2g}"


def _lr(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e+")


def _plural(count: int, word: str, words: str | None = None) -> str:
    return f"{_count(count)} {word if count == 1 else words or word + 's'}"


def plots_template(m: dict) -> str:
    return f"{m['template']} written; {m['config']}"


def report(m: dict) -> str:
    return (f"{m['folder']}/index.html and {m['folder']}/README.md: {_plural(m['tables'], 'table')}, "
            f"{_plural(m['figures'], 'figure')}")


def demo_data(m: dict) -> str:
    return (f"{_count(m['train_images'])} train and {_count(m['valid_images'])} valid images of "
            f"{_plural(m['classes'], 'digit')}; transfer task: {_count(m['transfer_train_images'])} train and "
            f"{_count(m['transfer_valid_images'])} valid of {_count(m['transfer_classes'])}")


def demo_model(m: dict) -> str:
    return (f"valid accuracy {_accuracy(m['valid_accuracy'])} (loss {_small(m['valid_loss'])}) on "
            f"{_count(m['valid_images'])} images, trained on {_count(m['train_images'])}; "
            f"{_count(m['params'])} params")


def pretrained(m: dict) -> str:
    return f"{m['name']}: {_plural(m['layers'], 'layer')}, {_count(m['params'])} params"


def listing(m: dict) -> str:
    others = [_plural(m[kind], word) for kind, word in (("links", "link"), ("bad_names", "bad name")) if m.get(kind)]
    return (f"{m['root']}: {_plural(m['files'], 'file')} in {_plural(m['folders'], 'folder')}"
            + "".join(f", {other}" for other in others))


def model_listing(m: dict) -> str:
    if not m["files"]:
        return "no model file named (model.source is demo or vgg16)"
    return f"{_plural(m['files'], 'model file')}: {m['hashed']} hashed, {m['reused']} unchanged since hashed"


def sample(m: dict) -> str:
    rejected = m["rejected"]
    replaced = f"{_plural(rejected, 'unusable file')} replaced (rejected.tsv names them)" if rejected else "none rejected"
    return f"{_count(m['train_images'])} train and {_count(m['valid_images'])} valid images; {replaced}"


def _rows(m: dict, split: str) -> str:
    computed, reused, resumed = (m[f"{split}_{key}"] for key in ("computed", "reused", "resumed"))
    return (f"{_count(computed + reused + resumed)} rows ({_count(computed)} computed, {_count(reused)} reused, "
            f"{_count(resumed)} resumed)")


def conv_features(m: dict) -> str:
    text = f"train {_rows(m, 'train')}, valid {_rows(m, 'valid')}"
    if "split_max_abs_diff" in m:  # the chief's check (another worker's line has none)
        text += (f"; dense-on-features diff {_small(m['split_max_abs_diff'])} over "
                 f"{_plural(m['split_checked_images'], 'image')}")
    return text


def bn_stats(m: dict) -> str:
    layers = {name: value for name, value in m.items() if isinstance(value, dict)}
    units, dead = sum(v["units"] for v in layers.values()), sum(v["dead_units"] for v in layers.values())
    text = f"{_plural(len(layers), 'layer')}, {_count(units)} units ({_count(dead)} dead: variance 0)"
    if 0 < len(layers) <= 4:
        text += ": " + ", ".join(f"{name} {_count(v['units'])} ({_count(v['dead_units'])} dead)"
                                 for name, v in layers.items())
    return text


def insert_bn(m: dict) -> str:
    text = (f"{_plural(m['bn_layers'], 'BN layer')}, max_abs_diff {_small(m['max_abs_diff'])} "
            f"(logits {_small(m['max_abs_diff_logits'])}), accuracy {_accuracy(m['accuracy_before'])} -> "
            f"{_accuracy(m['accuracy_after'])} on {_count(m['samples'])} valid rows")
    if "end_to_end_max_abs_diff" in m:
        text += (f"; end to end {_small(m['end_to_end_max_abs_diff'])} over "
                 f"{_plural(m['end_to_end_samples'], 'image')}")
    return text


def finetune(m: dict) -> str:
    return (f"{_plural(m['epochs'], 'epoch')}, valid accuracy {_accuracy(m['valid_accuracy'])} "
            f"(loss {_small(m['valid_loss'])}), train accuracy {_accuracy(m['train_accuracy'])} "
            f"(loss {_small(m['train_loss'])})")


def combine(m: dict) -> str:
    return (f"{_count(m['images'])} valid images: accuracy {_accuracy(m['combined_accuracy'])} combined, "
            f"{_accuracy(m['original_accuracy'])} original (loss {_small(m['combined_loss'])}, "
            f"{_small(m['original_loss'])})")


def transfer(m: dict) -> str:
    best = {start: f"{m[start]['best_accuracy']:.3f} at lr {_lr(m[start]['best_lr'])}"
            for start in ("with_bn", "without_bn")}
    trained = {"dense": "all dense layers trained", "head": "new head only"}.get(m["train_mode"], m["train_mode"])
    return (f"{_plural(len(m['classes']), 'class', 'classes')}, {trained}: best with BN "
            f"{best['with_bn']}, without {best['without_bn']}; spread over learning rates "
            f"{m['with_bn']['spread']:.2f} with BN, {m['without_bn']['spread']:.2f} without")


FORMATTERS: dict[str, Callable[[dict], str]] = {
    formatter.__name__: formatter for formatter in (plots_template, demo_data, demo_model, model_listing,
                                                    pretrained, listing, sample, conv_features, bn_stats, insert_bn, finetune, combine,
                                                    transfer, report)}
FORMATTERS["transfer_listing"] = listing  # the new task's folder, listed the same way


def summary(script: str, metrics: dict) -> str:
    """The line stage script `script` (its module's name, e.g. `conv_features`) logs about `metrics`."""
    line = FORMATTERS[script](metrics)
    if metrics.get("replicas", 1) > 1:
        line += f" ({metrics['replicas']} replicas, {metrics.get('strategy')})"
    return line
