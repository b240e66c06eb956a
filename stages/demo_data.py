"""Stage demo_data: write the demo's image folders (ImageNet layout) from scikit-learn's bundled digits: the
demo classifier's digits, and the held-back digits as a transfer task."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, out="image folder to write: <out>/{train,valid}/<digit>/*.png",
                           transfer_out="image folder of the held-back digits", metrics="JSON with the image counts")
    demo = stage.params().demo

    from vggbn.numerics.demo import run_demo_data
    from vggbn.storage.files import write_result

    result = run_demo_data(demo_out=args.out, transfer_out=args.transfer_out, size=demo.size,
                           valid_fraction=demo.valid_fraction, seed=demo.seed, classes=demo.classes,
                           transfer_train=demo.transfer_train)
    write_result(result, metrics=args.metrics)
    return result


if __name__ == "__main__":
    stage.run(main)
