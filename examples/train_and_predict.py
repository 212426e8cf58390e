"""Train with cross-validation on a class-folder tree, then predict a folder of new images.

python examples/train_and_predict.py photos/ new-photos/ --epochs 40
"""

import argparse
import logging

import resnexus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder with one sub-folder per class")
    parser.add_argument("new", help="folder of images to label")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--group-by", default=None, help="e.g. 'patient' for files named PATIENT_N.jpg")
    parser.add_argument("--out", default="runs/example")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = resnexus.TrainConfig(
        data=args.data, model=args.model, epochs=args.epochs, group_by=args.group_by, out=args.out, overwrite=True
    )
    cv = resnexus.cross_validate(config, folds=args.folds)
    print(f"cross-validated accuracy: {cv.mean['accuracy']:.3f} +- {cv.std['accuracy'] or 0:.3f}")
    written = resnexus.predict(args.out, args.new, f"{args.out}/predictions.csv", overwrite=True)
    print(f"predictions of the model trained on every image: {written}")


if __name__ == "__main__":
    main()
