"""Data: in-memory readers, batched device-side augmentation, Mixup/CutMix, samplers and the batch loader."""

from deitlab.data.augment import (
    EvalAugment,
    TrainAugment,
    eval_transform,
    normalize,
    random_erasing,
    random_resized_crop_flip,
)
from deitlab.data.datasets import (
    DATASETS,
    DatasetInfo,
    ImageSet,
    dataset_names,
    load_dataset,
    make_synthetic,
    read_idx,
    stratified_holdout,
)
from deitlab.data.imagefolder import ImageFolderStream, read_image_folder
from deitlab.data.loader import BatchLoader
from deitlab.data.mix import Mixup, one_hot_smooth
from deitlab.data.randaugment import RandAugment, apply_op, parse_rand_augment
from deitlab.data.samplers import RASampler, ShuffleSampler

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DatasetInfo",
    "EvalAugment",
    "ImageFolderStream",
    "ImageSet",
    "Mixup",
    "RASampler",
    "RandAugment",
    "ShuffleSampler",
    "TrainAugment",
    "apply_op",
    "dataset_names",
    "eval_transform",
    "load_dataset",
    "make_synthetic",
    "normalize",
    "one_hot_smooth",
    "parse_rand_augment",
    "random_erasing",
    "random_resized_crop_flip",
    "read_idx",
    "read_image_folder",
    "stratified_holdout",
]
