"""Datasets: MNIST, Fashion-MNIST, CIFAR-10 and SVHN readers, the data-root rule, normalisation, augmentation
and minibatching. No torchvision.

The data root (one folder holding ``mnist/``, ``cifar10/``, ``svhn/``) is, first match wins:
the explicit argument (``--data-root``), ``$MONDEQ_DATA``, the source checkout's ``data/``, the
user cache ``~/.cache/mondeq`` (see :mod:`mondeq.data.root`).

Example:
    >>> images, labels = load_dataset("cifar10", "/datasets", train=False)
    >>> x = normalize_dataset(images, "cifar10")
"""

from .augment import Augmentation, random_crop_flip
from .batching import batches, num_batches
from .cifar10 import (CIFAR10_ARCHIVE, CIFAR10_FOLDER, CIFAR10_MD5, CIFAR10_URL, download_cifar10,
                      load_cifar10, read_cifar10_batch)
from .download import download_file, file_md5, raw_md5
from .fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, FASHION_MNIST_MD5,
                            FASHION_MNIST_MEAN, FASHION_MNIST_STD, download_fashion_mnist,
                            load_fashion_mnist)
from ..errors import ChecksumError, DatasetFileError, DownloadError, MissingDatasetError
from .load import load_dataset
from .mnist import (DEFAULT_ROOT, MNIST_FILES, MNIST_MD5, MNIST_MEAN, MNIST_MIRRORS, MNIST_STD,
                    download_mnist, load_mnist, mnist_root, read_idx)
from .root import ENV_VAR, cache_data_root, checkout_data_root, resolve_data_root
from .specs import DATASETS, DatasetSpec, dataset_spec, denormalize, normalize, normalize_dataset
from .svhn import SVHN_FILES, SVHN_MD5, SVHN_URL, download_svhn, load_svhn

__all__ = [
    "Augmentation", "random_crop_flip",
    "batches", "num_batches",
    "CIFAR10_ARCHIVE", "CIFAR10_FOLDER", "CIFAR10_MD5", "CIFAR10_URL", "download_cifar10",
    "load_cifar10", "read_cifar10_batch",
    "download_file", "file_md5", "raw_md5",
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES", "FASHION_MNIST_MD5", "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD", "download_fashion_mnist", "load_fashion_mnist",
    "ChecksumError", "DatasetFileError", "DownloadError", "MissingDatasetError",
    "load_dataset",
    "DEFAULT_ROOT", "MNIST_FILES", "MNIST_MD5", "MNIST_MEAN", "MNIST_MIRRORS", "MNIST_STD",
    "download_mnist", "load_mnist", "mnist_root", "read_idx",
    "ENV_VAR", "cache_data_root", "checkout_data_root", "resolve_data_root",
    "DATASETS", "DatasetSpec", "dataset_spec", "denormalize", "normalize", "normalize_dataset",
    "SVHN_FILES", "SVHN_MD5", "SVHN_URL", "download_svhn", "load_svhn",
]
