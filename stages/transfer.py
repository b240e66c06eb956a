"""Stage transfer (the notebook's vgg_ft_bn): train a new softmax layer for a new task's classes on top of the
fine-tuned dense part with BN and, side by side, the original dense part without BN, over learning rates."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, pretrained="the pretrained classifier (.keras)",
                           finetuned="the fine-tuned dense part with BN (.keras)",
                           cut_from="a feature file of the pipeline: where to cut",
                           listing="listing of transfer.root", train_out="the new task's train features (HDF5)",
                           valid_out="the new task's valid features (HDF5)",
                           work="resumable work in progress of the features",
                           metrics="JSON: accuracy and loss per learning rate, with and without BN",
                           plots="folder: accuracy against learning rate, one CSV per start")
    params = stage.params()

    from vggbn.storage.files import write_result
    from vggbn.numerics.images import ImageInput
    from vggbn.numerics.transfer import run_transfer

    result = run_transfer(pretrained_path=args.pretrained, finetuned_path=args.finetuned, cut_from=args.cut_from,
                          listing=args.listing, inputs=ImageInput.from_params(params, root=params.transfer.root),
                          out_paths={"train": args.train_out, "valid": args.valid_out}, work_dir=args.work,
                          params=params.transfer)
    write_result(result, metrics=args.metrics, plots={"transfer": args.plots})
    return result


if __name__ == "__main__":
    stage.run(main, runs_model=True)
