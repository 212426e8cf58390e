"""Fine-tune ImageNet weights on a class-folder tree (needs the weights: a download, or
$RESNEXUS_WEIGHTS_DIR holding the file), with cross-validation and a refit.

    python examples/fine_tune.py photos/ --model resnet50 --group-by patient
"""

import argparse
import logging

import resnexus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="imagenet", help="a tag (see `resnexus models --weights`) or a file")
    parser.add_argument("--freeze", type=int, default=0, help="keep the stem and the first N stages frozen")
    parser.add_argument("--group-by", default=None)
    parser.add_argument("--out", default="runs/fine-tuned")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = resnexus.TrainConfig(
        data=args.data,
        model=args.model,
        weights=args.weights,
        freeze=args.freeze,
        group_by=args.group_by,
        out=args.out,
        overwrite=True,
    )
    cv = resnexus.cross_validate(config, folds=5)
    print(f"cross-validated accuracy: {cv.mean['accuracy']:.3f}; final model: {cv.refit_dir}")


if __name__ == "__main__":
    main()
