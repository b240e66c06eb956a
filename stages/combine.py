"""Stage combine: join the conv part and the fine-tuned dense part; evaluate both models on the valid images."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, pretrained="the pretrained classifier (.keras)",
                           conv="the conv part from insert_bn (.keras)", dense="the fine-tuned dense part (.keras)",
                           sample="folder with the valid.tsv manifest", out="the combined model (.keras)",
                           weights="its weights alone (.weights.h5)",
                           metrics="JSON: loss and accuracy, combined and original",
                           confusion="CSV: actual and predicted class of each valid image")
    params = stage.params()

    from vggbn.numerics.combine import run_combine
    from vggbn.storage.files import write_result
    from vggbn.numerics.images import ImageInput

    result = run_combine(pretrained_path=args.pretrained, conv_path=args.conv, dense_path=args.dense,
                         sample_dir=args.sample, inputs=ImageInput.from_params(params), out_path=args.out,
                         weights_path=args.weights)
    write_result(result, metrics=args.metrics, plots={"confusion": args.confusion})
    return result


if __name__ == "__main__":
    stage.run(main, runs_model=True)
