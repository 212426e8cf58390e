"""What each command is for, how it is typed, and the help texts several commands share.

Kept apart from the parsers so the words a user reads can be reviewed in one place; the tests parse
every example line with the real parser, so an example cannot drift from the flags.
"""

from __future__ import annotations

DESCRIPTION = "The ResNet family of image classifiers."
EPILOG = "`resnexus COMMAND --help` describes a command, its options and examples; start with `resnexus train`."

# What each command is for and how it is typed: `resnexus COMMAND --help` shows the description
# above the options and the examples below them (tests parse every example with build_parser).
GUIDE: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": (
        "Train a model on a labelled image folder (or a path,label CSV), evaluate it on a held-out test\n"
        "split and write a run directory: checkpoints, metrics and a report. Without --data it trains on\n"
        "scikit-learn's handwritten digits, a check that everything works. On a small data set add\n"
        "--folds K for a cross-validated estimate, and --group-by so one patient's images stay together.",
        (
            "resnexus train                                  # built-in digits, a few minutes on a laptop",
            "resnexus train --data photos/ --model resnet18 --folds 5 --group-by patient --out runs/lesions",
            "resnexus train --data photos/ --model resnet50 --weights imagenet --freeze 1   # fine-tune",
            "resnexus train --data labels.csv --group-by site --epochs 40 --out runs/sites",
            "resnexus train --resume runs/lesions            # continue a stopped run (or --epochs 60: longer)",
            "resnexus train --data photos/ --nproc 2 --batch-size 128   # two processes, data-parallel",
        ),
    ),
    "compare": (
        "Train several models on the same split (or the same K folds) with the same recipe and write a\n"
        "side-by-side table (comparison.md/.csv) and a plot: accuracy, parameters, MACs, speed, memory.\n"
        "Use it to choose an architecture for your data; with --folds the table has the mean, its\n"
        "corrected standard error and each model's paired difference against the first.",
        (
            "resnexus compare --models resnet20_cifar,resnet32_cifar --out runs/digits-compare",
            "resnexus compare --models resnet18,resnext50_32x4d --data photos/ --folds 5 --group-by patient "
            "--out runs/cmp",
            "resnexus compare --models resnet18,resnet50 --data photos/ --folds 5 --repeats 3 --jobs 2 --out runs/cmp3",
            "resnexus compare --models resnet50,keras:resnet50 --data photos/ --out runs/frameworks",
            "resnexus compare --models resnet18,resnext50_32x4d --data photos/ --folds 5 --group-by patient "
            "--out runs/cmp --resume",
        ),
    ),
    "calibrate": (
        "Fit again how sure a cross-validation run's model is, from its fold models' out-of-fold\n"
        "predictions: the temperature, the prediction sets' scores and, for two classes, the decision\n"
        "threshold for a target sensitivity or specificity. `train --folds K` does this by itself; use it\n"
        "for another target, or for a run trained before its fold runs kept their test predictions.",
        (
            "resnexus calibrate runs/lesions",
            "resnexus calibrate runs/lesions --target-sensitivity 0.95",
            "resnexus calibrate runs/lesions --target-specificity 0.9 --no-temperature-scaling",
        ),
    ),
    "evaluate": (
        "Measure a trained model on labelled images it has not seen: accuracy, per-class metrics and the\n"
        "confusion matrix (for two classes also sensitivity, specificity and ROC-AUC). Use it on a new\n"
        "test set, or on an exported .onnx file to check the export gives the same numbers.",
        (
            "resnexus evaluate --checkpoint runs/lesions --data new-photos/",
            "resnexus evaluate --checkpoint runs/lesions/checkpoints/best.pt --data photos/test --out metrics.json",
            "resnexus evaluate --checkpoint runs/cv --ensemble --tta --data new-photos/",
            "resnexus evaluate --checkpoint model.onnx --data new-photos/ --positive-class melanoma",
            "resnexus evaluate --checkpoint runs/cv --data new-photos/ --coverage 0.9   # calibration, set coverage",
        ),
    ),
    "predict": (
        "Classify unlabelled images with a trained model (or a registry model with published weights)\n"
        "and write one CSV row per image: the predicted label and every class's probability.\n"
        "Use --id-label for a Kaggle-style id,label submission file.",
        (
            "resnexus predict --checkpoint runs/lesions --input new-photos/ --output predictions.csv",
            "resnexus predict --checkpoint model.onnx --input photo.jpg --output photo.csv",
            "resnexus predict --model resnet50 --weights imagenet --input photos/ --output imagenet.csv",
            "resnexus predict --checkpoint runs/cv --ensemble --tta --input test/ --output submission.csv --id-label",
            "resnexus predict --checkpoint runs/cv --input new-photos/ --output sets.csv --coverage 0.9",
        ),
    ),
    "explain": (
        "Draw Grad-CAM heat maps over images: where in each image the evidence for a class lies, one\n"
        "<image>_gradcam.png per image and explain.csv. Use it to check that a model looks at the\n"
        "object, not at a ruler, a label or the background.",
        (
            "resnexus explain --checkpoint runs/lesions --input new-photos/ --out cams/",
            "resnexus explain --checkpoint runs/lesions --input photo.jpg --out cams/ --target melanoma",
            "resnexus explain --checkpoint runs/cv --ensemble --input photos/test --out cams/ --overwrite",
            "resnexus explain --checkpoint runs/cv --input new-photos/ --out cams/ --coverage 0.9",
        ),
    ),
    "export": (
        "Convert a trained checkpoint for deployment: ONNX (onnxruntime; predict, evaluate and serve\n"
        "read it too), a Keras .keras file, or a TensorFlow SavedModel folder for TF Serving.\n"
        "Check the result with `resnexus evaluate --checkpoint model.onnx --data ...`.",
        (
            "resnexus export --checkpoint runs/lesions --output model.onnx",
            "resnexus export --checkpoint runs/lesions --output model.keras --format keras",
            "resnexus export --checkpoint runs/lesions --output saved/lesions --format savedmodel --overwrite",
        ),
    ),
    "check-data": (
        "Check an image folder or a path,label CSV before training: unreadable, truncated and oversized\n"
        "files, duplicates (also across splits and labels), empty or stray class folders, and whether\n"
        "train can split it with these fractions and --group-by. It reads the images and changes nothing.",
        (
            "resnexus check-data photos/",
            "resnexus check-data photos/ --group-by patient --quiet",
            "resnexus check-data labels.csv --group-by site --test-fraction 0.3",
        ),
    ),
    "models": (
        "List the registered architectures with their parameters, multiply-accumulates per image and\n"
        "the paper's error, or (--weights) the published weights each can load: the tags that\n"
        "`train --weights` and `predict --weights` take. Use it to pick a --model.",
        (
            "resnexus models",
            "resnexus models 'resnext*'",
            "resnexus models --family densenet --markdown",
            "resnexus models resnet50 --weights",
        ),
    ),
    "serve": (
        "Serve a trained model over HTTP: POST /v1/predict returns class probabilities (calibrated, with\n"
        "a prediction set, for a `train --folds K` run), / is a web page to try images by hand, /metrics\n"
        "is for Prometheus; requests arriving together are batched.\n"
        "Needs the serve extra: pip install 'resnexus[serve]'.",
        (
            "resnexus serve --checkpoint runs/lesions",
            "resnexus serve --checkpoint model.onnx --port 9000 --max-batch 16",
            "resnexus serve --checkpoint runs/cv --max-file-mb 32 --no-batching",
            "resnexus serve --checkpoint runs/cv --coverage 0.95",
        ),
    ),
}


CHECKPOINT_HELP = (
    "a resnexus checkpoint, an exported .onnx file, or a run directory "
    "(a `train --folds` directory: its refit model; a `train` directory: its best.pt)"
)
ENSEMBLE_HELP = "--checkpoint is a `train --folds` directory: use its fold models, averaging their probabilities"


SERVE_EPILOG = """\
The server has no authentication. It binds 127.0.0.1 (this machine only) unless --host says
otherwise, and warns when it does. To let others in, keep it on 127.0.0.1 behind a reverse proxy
that authenticates over HTTPS (basic auth over plain HTTP shows the password), e.g. Caddy, which
gets a certificate itself (the hash from `caddy hash-password`):

  example.org {
      basic_auth {
          alice <hash>
      }
      reverse_proxy 127.0.0.1:8000
  }

or nginx, in a server block with TLS (users from `htpasswd -c /etc/nginx/resnexus.htpasswd alice`):

  location / {
      auth_basic "resnexus";
      auth_basic_user_file /etc/nginx/resnexus.htpasswd;
      client_max_body_size 64m;        # nginx refuses bodies over 1 MB by default
      proxy_pass http://127.0.0.1:8000;
  }
"""
