"""Writers of small MNIST-style (IDX), CIFAR-10 and SVHN files in the exact official formats, for tests.

Not a conftest: import what you need (``from tests.fake_datasets import write_fake_cifar10``).
Both writers put the files where :func:`mondeq.data.load_dataset` looks for them under a data
root (``root/cifar10/…``, ``root/svhn/…``) and return the pixels and labels they wrote, so a test
can compare what the reader returns with what the official layout means.

The images are learnable: each class has its own colour and a bright square at its own place,
plus noise, so a tiny training run can show its accuracy rising above chance.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import scipy.io

from mondeq.data import MNIST_FILES

__all__ = ["fake_images", "write_fake_cifar10", "write_fake_svhn", "write_idx_pair"]

def write_idx_pair(folder: Path, n: int, *, seed: int, gzipped: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The four files in the official IDX format (big-endian header, unsigned bytes), n random
    28×28 images in each split, in ``folder``; gzip-compressed unless ``gzipped`` is false
    (torchvision's extracted copies)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for image_name, label_name in MNIST_FILES.values():  # Fashion-MNIST's names too
        for name, array, magic in ((image_name, images, b"\x00\x00\x08\x03"),
                                   (label_name, labels, b"\x00\x00\x08\x01")):
            blob = magic + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()
            if gzipped:
                (folder / name).write_bytes(gzip.compress(blob))
            else:
                (folder / name.removesuffix(".gz")).write_bytes(blob)
    return images, labels


def fake_images(n: int, *, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(images, labels)``: uint8 (n, 3, 32, 32) in (image, channel, row, col) order
    and int64 labels in 0..num_classes−1, each class with its own colour and square."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    colours = np.random.default_rng(1234).integers(40, 200, size=(num_classes, 3))
    images = rng.integers(0, 60, size=(n, 3, 32, 32)).astype(np.int64)
    images += colours[labels][:, :, None, None]
    for i, k in enumerate(labels):
        r, c = 3 * int(k) % 24, 7 * int(k) % 24
        images[i, :, r : r + 8, c : c + 8] = 250
    return np.clip(images, 0, 255).astype(np.uint8), labels


def _cifar_batch(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """A batch pickled as the official one: bytes keys, data N×3072 channel-major, a label list."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(k) for k in labels],
        b"data": images.reshape(len(images), 3 * 32 * 32),   # R plane, G plane, B plane; row-major
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=2)


def write_fake_cifar10(root: str | Path, n_train: int = 50, n_test: int = 20, *, seed: int = 0,
                       archive: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes a small CIFAR-10 under ``root/cifar10`` in the official python-batch format.

    Args:
        root: The data root.
        n_train: Training images, split over ``data_batch_1`` … ``data_batch_5`` (in order).
        n_test: Images in ``test_batch``.
        seed: Seed of the pixels and labels.
        archive: Write ``cifar-10-python.tar.gz`` holding ``cifar-10-batches-py/`` instead of
            the extracted folder.

    Returns:
        ``{"train": (images, labels), "test": (images, labels)}`` as written, images uint8
        (N, 3, 32, 32).
    """
    folder = Path(root) / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    train = fake_images(n_train, seed=seed)
    test = fake_images(n_test, seed=seed + 1)
    files: dict[str, bytes] = {}
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        files[f"data_batch_{i}"] = _cifar_batch(train[0][part], train[1][part],
                                                f"training batch {i} of 5")
    files["test_batch"] = _cifar_batch(*test, "testing batch 1 of 1")
    files["batches.meta"] = pickle.dumps({b"num_cases_per_batch": 10000, b"num_vis": 3072,
                                          b"label_names": [b"airplane", b"automobile", b"bird",
                                                           b"cat", b"deer", b"dog", b"frog",
                                                           b"horse", b"ship", b"truck"]},
                                         protocol=2)
    if archive:
        with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, blob in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        batches = folder / "cifar-10-batches-py"
        batches.mkdir(exist_ok=True)
        for name, blob in files.items():
            (batches / name).write_bytes(blob)
    return {"train": train, "test": test}


def write_fake_svhn(root: str | Path, n_train: int = 50, n_test: int = 20, *, seed: int = 0,
                    label_dtype: type = np.uint8) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes small ``train_32x32.mat`` and ``test_32x32.mat`` under ``root/svhn``.

    The layout is the official one: ``X`` of shape (32, 32, 3, N) uint8 indexed (row, col,
    channel, image), ``y`` of shape (N, 1) with labels 1..10 where 10 is the digit 0.

    Returns:
        ``{"train": (images, digits), "test": (images, digits)}``: images uint8 (N, 3, 32, 32)
        and the digits 0..9 (what a reader must return, not the file's 1..10).
    """
    folder = Path(root) / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, digits = fake_images(n, seed=s)
        file_labels = np.where(digits == 0, 10, digits).astype(label_dtype).reshape(n, 1)
        x = np.ascontiguousarray(images.transpose(2, 3, 1, 0))   # (row, col, channel, image)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": file_labels})
        out[split] = (images, digits)
    return out
