"""Data: one spec language for every verb, datasets (Fashion-MNIST, image folders, digits), seeded subsets,
domains as pure pixel transforms and batch augmentation. Imports only :mod:`gkt.core`."""

from gkt.data.datasets import ImageDataset, TensorImageDataset, iterate_batches
from gkt.data.spec import DataSpec, load_split
from gkt.data.subsets import stratified_subset

__all__ = ["DataSpec", "ImageDataset", "TensorImageDataset", "iterate_batches", "load_split", "stratified_subset"]
