"""Stage conv_features: cache the conv part's output (up to features.cut) for the sampled images in HDF5."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, model="the pretrained classifier (.keras)",
                           sample="folder with the train.tsv and valid.tsv manifests",
                           train_out="train features to write (HDF5)", valid_out="valid features to write (HDF5)",
                           work="resumable work in progress, outside the declared outputs",
                           metrics="JSON with row counts and the split check")
    params = stage.params()

    from vggbn.numerics.extract import run_conv_features
    from vggbn.storage.files import write_result
    from vggbn.numerics.images import ImageInput

    result = run_conv_features(model_path=args.model, sample_dir=args.sample, inputs=ImageInput.from_params(params),
                               out_paths={"train": args.train_out, "valid": args.valid_out}, work_dir=args.work,
                               cut=params.features.cut, dtype=params.features.dtype,
                               compute=params.features.compute, flip=params.features.flip)
    write_result(result, metrics=args.metrics)
    return result


if __name__ == "__main__":
    stage.run(main, runs_model=True)
