"""Datasets for the examples: scikit-learn's 8x8 digits (bundled) and MNIST from local files.

Every loader returns a :class:`Dataset` with images flattened to rows of
``float32`` values in ``[0, 1]`` and ``int32`` labels in ``0..9``.

MNIST is never downloaded. :func:`load_mnist` reads a directory holding either

* the four IDX files of the original distribution, each plain or gzipped
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, optionally ending in
  ``.gz``), or
* the ``mnist.npz`` archive that ``keras.datasets.mnist`` caches, with the arrays
  ``x_train``, ``y_train``, ``x_test`` and ``y_test``.

A missing file raises :class:`FileNotFoundError` and a malformed one raises
:class:`DataFormatError` (a :class:`ValueError`); both messages name the path.

IDX layout (big-endian): two zero bytes, a type code (``0x08`` for unsigned
bytes), the number of dimensions, one ``uint32`` size per dimension, then the
values. Image files therefore start with the magic number 2051 (``0x00000803``)
and label files with 2049 (``0x00000801``).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

NUM_CLASSES = 10
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
NPZ_FILE = "mnist.npz"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DATASETS = ("digits", "mnist")


class DataFormatError(ValueError):
    """A data file exists but its contents are not what the loader expects."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset split into train and test parts.

    Attributes:
      name: a short description, e.g. ``"digits (8x8)"``.
      x_train: ``float32`` array ``(n_train, n_features)`` with values in ``[0, 1]``.
      y_train: ``int32`` array ``(n_train,)`` with labels in ``0..9``.
      x_test: ``float32`` array ``(n_test, n_features)``.
      y_test: ``int32`` array ``(n_test,)``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits, split per class.

    The split is deterministic: with the same ``seed`` every call returns the
    same train and test rows, and each class keeps the same share of test rows.

    Args:
      test_fraction: share of each class held out for testing, in ``(0, 1)``.
      seed: seed of the shuffle that picks the test rows.

    Returns:
      A :class:`Dataset` with 64 features scaled from ``0..16`` to ``[0, 1]``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got test_fraction={test_fraction!r}.")
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_load_digits()
    x = (np.asarray(bunch.data, np.float32) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset("digits (8x8, scikit-learn)", x_train, y_train, x_test, y_test)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, EOFError) as error:
        # gzip raises BadGzipFile (an OSError) or EOFError on a corrupt archive.
        raise DataFormatError(path, f"cannot read the file ({error})") from error


def read_idx(path: str | os.PathLike[str], expected_magic: int | None = None) -> np.ndarray:
    """Read one unsigned-byte IDX file (plain, or gzipped when the name ends in ``.gz``).

    Args:
      path: the file.
      expected_magic: the magic number the file must start with (2051 for
        images, 2049 for labels), or ``None`` to accept any unsigned-byte IDX file.

    Returns:
      A ``uint8`` array with the shape stored in the header.

    Raises:
      FileNotFoundError: the file does not exist.
      DataFormatError: wrong magic number, a type other than unsigned bytes, or
        a data section whose length does not match the sizes in the header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataFormatError(path, f"too short for an IDX header ({len(raw)} bytes)")
    (magic,) = struct.unpack(">I", raw[:4])
    if expected_magic is not None and magic != expected_magic:
        raise DataFormatError(
            path, f"bad magic number {magic} (0x{magic:08x}), expected {expected_magic}"
        )
    zeros, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zeros != 0 or type_code != 0x08 or ndim == 0:
        raise DataFormatError(
            path,
            f"bad magic number {magic} (0x{magic:08x}): not an unsigned-byte IDX file",
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataFormatError(
            path, f"header declares {ndim} dimensions but the file has only {len(raw)} bytes"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = header_size + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise DataFormatError(
            path,
            f"wrong size: the header declares shape {tuple(shape)}, i.e. {expected} bytes, "
            f"but the file has {len(raw)} bytes",
        )
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _check_split(
    images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path
) -> None:
    if images.ndim < 2:
        raise DataFormatError(
            images_path, f"images must have a sample axis and pixels, got shape {images.shape}"
        )
    if labels.ndim != 1:
        raise DataFormatError(labels_path, f"labels must be 1-D, got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            labels_path,
            f"{labels.shape[0]} labels for {images.shape[0]} images in {images_path}",
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataFormatError(
            labels_path,
            f"labels must be in 0..{NUM_CLASSES - 1}, got values in {labels.min()}..{labels.max()}",
        )


def _as_dataset(name: str, arrays: dict[str, np.ndarray], paths: dict[str, Path]) -> Dataset:
    for split in ("train", "test"):
        _check_split(
            arrays[f"x_{split}"], arrays[f"y_{split}"], paths[f"x_{split}"], paths[f"y_{split}"]
        )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataFormatError(
            paths["x_test"],
            f"test images have shape {arrays['x_test'].shape[1:]} but the training images "
            f"in {paths['x_train']} have shape {arrays['x_train'].shape[1:]}",
        )

    def scale(images: np.ndarray) -> np.ndarray:
        flat = images.reshape(images.shape[0], -1)
        return (flat.astype(np.float32) / 255.0).astype(np.float32)

    return Dataset(
        name,
        scale(arrays["x_train"]),
        arrays["y_train"].astype(np.int32),
        scale(arrays["x_test"]),
        arrays["y_test"].astype(np.int32),
    )


def _load_mnist_idx(directory: Path) -> Dataset:
    paths: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        found = _find_idx(directory, stem)
        if found is None:
            raise FileNotFoundError(
                f"{directory / stem}: MNIST IDX file not found (also looked for "
                f"{directory / stem}.gz); the directory must hold all four IDX files "
                f"{', '.join(IDX_FILES.values())} or {NPZ_FILE}"
            )
        paths[key] = found
    arrays = {
        key: read_idx(path, IMAGES_MAGIC if key.startswith("x") else LABELS_MAGIC)
        for key, path in paths.items()
    }
    return _as_dataset(f"MNIST (IDX files in {directory})", arrays, paths)


def _load_mnist_npz(path: Path) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataFormatError(path, f"not a readable .npz archive ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataFormatError(path, "holds a single array, not an .npz archive of named arrays")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise DataFormatError(
                path,
                f"missing key(s) {', '.join(missing)}; expected {', '.join(NPZ_KEYS)}, "
                f"found {', '.join(archive.files) or 'none'}",
            )
        try:
            arrays = {key: np.asarray(archive[key]) for key in NPZ_KEYS}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise DataFormatError(path, f"cannot read an array ({error})") from error
    for key, array in arrays.items():
        if array.dtype.kind not in "iu":
            raise DataFormatError(path, f"{key} must hold integers, got dtype {array.dtype}")
        if key.startswith("x") and (array.size and (array.min() < 0 or array.max() > 255)):
            raise DataFormatError(path, f"{key} must hold pixel values in 0..255")
    return _as_dataset(f"MNIST ({path})", arrays, dict.fromkeys(NPZ_KEYS, path))


def load_mnist(data_dir: str | os.PathLike[str]) -> Dataset:
    """MNIST from a local directory: the four IDX files (plain or ``.gz``) or ``mnist.npz``.

    When any IDX file is present the IDX layout is used and all four must be
    there; otherwise ``mnist.npz`` is read.

    Args:
      data_dir: the directory holding the files.

    Returns:
      A :class:`Dataset` with images flattened to rows and scaled to ``[0, 1]``.

    Raises:
      FileNotFoundError: the directory, an IDX file, or ``mnist.npz`` is missing.
      DataFormatError: a file is malformed (bad magic number, wrong sizes,
        missing ``.npz`` key, label/image count mismatch, ...).
    """
    directory = Path(data_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: MNIST data directory not found")
    if any(_find_idx(directory, stem) is not None for stem in IDX_FILES.values()):
        return _load_mnist_idx(directory)
    npz = directory / NPZ_FILE
    if not npz.is_file():
        raise FileNotFoundError(
            f"{directory}: no MNIST files found; expected the IDX files "
            f"{', '.join(IDX_FILES.values())} (optionally .gz) or {npz}"
        )
    return _load_mnist_npz(npz)


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load ``"digits"`` (bundled, no download) or ``"mnist"`` (from ``data_dir``)."""
    if name == "digits":
        return load_digits()
    if name == "mnist":
        if data_dir is None:
            raise ValueError(
                "the mnist dataset is read from local files: pass --data-dir DIR with the "
                f"IDX files or {NPZ_FILE}"
            )
        return load_mnist(data_dir)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
