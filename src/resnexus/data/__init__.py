"""Datasets for training and prediction: scanning folders/CSVs, grouped splits, transforms.

Everything goes through :class:`Samples` (paths, labels, class names, groups); problems with
the data raise :class:`DataError`, whose message names the offending path.
"""

from .builtin import digits_folder
from .dataset import (
    BadImage,
    DecodedCache,
    ImageDataset,
    ImageFileError,
    UnlabeledDataset,
    collate_readable,
    decode_image_bytes,
    load_image,
)
from .scan import (
    GROUP_PATTERNS,
    IMAGE_EXTENSIONS,
    DataError,
    Samples,
    group_ids,
    natural_key,
    scan_csv,
    scan_dataset,
    scan_folder,
    scan_unlabeled,
)
from .split import kfold_splits, resolve_splits, split_samples
from .transforms import AugmentConfig, EvalPreprocess, Preprocess, TrainAugment, eval_transform, train_transform

__all__ = [
    "GROUP_PATTERNS",
    "IMAGE_EXTENSIONS",
    "AugmentConfig",
    "BadImage",
    "DataError",
    "DecodedCache",
    "EvalPreprocess",
    "ImageDataset",
    "ImageFileError",
    "Preprocess",
    "Samples",
    "TrainAugment",
    "UnlabeledDataset",
    "collate_readable",
    "decode_image_bytes",
    "digits_folder",
    "eval_transform",
    "group_ids",
    "kfold_splits",
    "load_image",
    "natural_key",
    "resolve_splits",
    "scan_csv",
    "scan_dataset",
    "scan_folder",
    "scan_unlabeled",
    "split_samples",
    "train_transform",
]
