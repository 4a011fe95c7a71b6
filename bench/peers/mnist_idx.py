"""MNIST's four IDX files as NumPy arrays, for the peer programs beside this file.

Each peer runs in its own venv (NumPy and its framework, never mnistlab), with this folder
on its path as the script's own: they share this reader instead of each carrying a copy.
"""
import gzip

import numpy as np

FILES = ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(folder):
    """(train images, train labels, test images, test labels): uint8, images (N, 28, 28)."""
    return tuple(idx(f"{folder}/{name}-ubyte.gz") for name in FILES)
