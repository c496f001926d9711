"""Data: in-memory readers, batched device-side augmentation, Mixup/CutMix, samplers and the batch loader."""

from deitlab.data.augment import (
    EvalAugment,
    TrainAugment,
    eval_transform,
    normalize,
    random_erasing,
    random_resized_crop_flip,
)
from deitlab.data.datasets import DATASETS, DatasetInfo, dataset_names, dataset_spec, load_dataset
from deitlab.data.geometry import EvalGeometry, TrainGeometry
from deitlab.data.imageset import DatasetSpec, ImageSet, stratified_holdout
from deitlab.data.loader import BatchLoader
from deitlab.data.mix import Mixup, one_hot_smooth
from deitlab.data.randaugment import RandAugment, apply_op, parse_rand_augment
from deitlab.data.readers.idx import read_idx
from deitlab.data.readers.imagefolder import ImageFolder, read_image_folder
from deitlab.data.readers.synthetic import make_synthetic
from deitlab.data.samplers import RASampler, ShuffleSampler

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DatasetInfo",
    "DatasetSpec",
    "EvalAugment",
    "EvalGeometry",
    "ImageFolder",
    "ImageSet",
    "Mixup",
    "RASampler",
    "RandAugment",
    "ShuffleSampler",
    "TrainAugment",
    "TrainGeometry",
    "apply_op",
    "dataset_names",
    "dataset_spec",
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
