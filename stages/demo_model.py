"""Stage demo_model: train the demo's small VGG-style classifier (no batch normalization) on the demo folder."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, data="the demo image folder", out="the trained classifier (.keras)",
                           live="dvclive folder for the per-epoch curves", metrics="JSON with the valid accuracy")
    demo = stage.params().demo

    from vggbn.numerics.demo_model import run_demo_model
    from vggbn.storage.files import write_result

    result = run_demo_model(root=args.data, out_path=args.out, size=demo.size, epochs=demo.epochs,
                            batch_size=demo.batch_size, lr=demo.lr, seed=demo.seed, live_dir=args.live)
    write_result(result, metrics=args.metrics)
    return result


if __name__ == "__main__":
    stage.run(main, runs_model=True)
