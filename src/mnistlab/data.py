"""Find, verify and load the datasets mnistlab trains on.

A dataset is four IDX files (train/test images and labels). `load` looks for them in a
fixed order -- `data_dir`, `$MNISTLAB_DATA/<name>/`, the user cache, Debian's
`/usr/share/datasets/<name>/` -- and only then downloads them with Pooch into the cache.
Every file is checked against a known hash before it is read, so a run always sees the
bytes the registry names; anything a user can fix raises `UserError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import pooch
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from mnistlab.errors import UserError

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

# Debian installs dataset packages here (`apt install dataset-fashion-mnist`).
SYSTEM_DIR = Path("/usr/share/datasets")

_FIX_FILE = "Delete it and let mnistlab download it again, or point --data-dir at a good copy."


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and where its bytes come from.

    Attributes:
      name: the name users type (`--dataset`); also the folder name `<name>/`.
      description: one line for listings.
      files: role (one of `ROLES`) -> (file name, known hash "sha256:..." or "md5:...").
      mirrors: base URLs tried in order; a file's URL is mirror + file name.
      num_classes: labels must lie in [0, num_classes).
      class_names: one name per class.
      image_shape: the shape of one image.
      also_accept: role -> further hashes accepted for local files only. Debian
        re-gzips Fashion-MNIST (no file name in the gzip header, a new mtime), so its
        copies differ byte-wise from Zalando's while holding the same IDX data.
    """

    name: str
    description: str
    files: dict[str, tuple[str, str]]
    mirrors: tuple[str, ...]
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, ...] = (28, 28)
    also_accept: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


def _sha256s(*hexes: str) -> dict[str, tuple[str, str]]:
    """The standard four IDX file names, paired with their sha256 in `ROLES` order."""
    return {r: (f, f"sha256:{h}") for r, f, h in zip(ROLES, IDX_NAMES, hexes, strict=True)}


_MNIST = DatasetInfo(
    name="mnist",
    description="MNIST handwritten digits (LeCun, Cortes, Burges), 60k/10k, 28x28",
    # As listed and checked in shared/datasets/mnist/SOURCE.md (md5s equal torchvision's).
    files=_sha256s("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                   "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                   "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                   "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),  # TensorFlow's
    num_classes=10,
    class_names=tuple("0123456789"),
)

_FASHION = DatasetInfo(
    name="fashion-mnist",
    description="Fashion-MNIST clothing (Zalando Research), 60k/10k, 28x28",
    # Zalando's files, sha256 as torchvision's prototype datasets and TFDS list them;
    # md5s in Zalando's README: 8d4fb7e6.., 25c81989.., bef4ecab.., bb300cfd...
    files=_sha256s("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                   "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                   "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                   "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's
             "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"),  # Keras'
    num_classes=10,
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    # sha256 of /usr/share/datasets/fashion-mnist/*.gz in Debian bookworm's
    # dataset-fashion-mnist 0.0~git20200523.55506a9-1 (same names, re-gzipped).
    also_accept={role: (f"sha256:{h}",) for role, h in zip(ROLES, (
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"))},
)

_KMNIST = DatasetInfo(
    name="kmnist",
    description="Kuzushiji-MNIST cursive Japanese (ROIS-CODH), 60k/10k, 28x28",
    # sha256 as torchvision's prototype datasets and TFDS list them; torchvision's
    # md5s: bdb82020.., e144d726.., 5c965bf0.., 7320c461...
    files=_sha256s("51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
                   "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
                   "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
                   "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c"),
    mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
             "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    num_classes=10,
    class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
)

DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (_MNIST, _FASHION, _KMNIST)}


# --------------------------------------------------------------------- derived datasets
# Datasets computed from another one by a deterministic function instead of read from
# files: `load(name)` loads the base and calls the builder on it. The builder is named
# as "module:function" and imported on use (it imports this module for `Arrays`); that
# module's `INFO` is the derived dataset's `DatasetInfo`.


@dataclasses.dataclass(frozen=True)
class Derived:
    base: str  # a key of DATASETS
    builder: str  # "module:function", called with the base `Arrays`, returning `Arrays`
    description: str


DERIVED: dict[str, Derived] = {
    "mnist-multi": Derived("mnist", "mnistlab.multilabel:derive",
                           "one or two MNIST digits side by side (28x56), labelled by the set of digits"),
}


def _load_derived(name: str, data_dir, mirrors) -> "Arrays":
    import importlib

    entry = DERIVED[name]
    module, function = entry.builder.split(":")
    return getattr(importlib.import_module(module), function)(load(entry.base, data_dir, mirrors=mirrors))


@dataclasses.dataclass(frozen=True, eq=False)
class Arrays:
    """A loaded dataset: read-only uint8 arrays, and the folder they were read from."""

    train_images: np.ndarray  # (N, *image_shape) uint8
    train_labels: np.ndarray  # (N,) uint8
    test_images: np.ndarray
    test_labels: np.ndarray
    info: DatasetInfo
    source: Path


# ------------------------------------------------------------------------------- IDX

_IDX_TYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32",
              0x0D: "float32", 0x0E: "float64"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzip if the name ends in .gz, else raw) as a uint8 array.

    The array is a view of the decompressed bytes (`np.frombuffer`, no copy), hence
    read-only. The header is checked against the exact length: a short file is a
    cut-off download, a long one is not the file its header describes.
    """
    path = Path(path)
    raw = _read_bytes(path)
    gz = " after gunzip" if path.suffix == ".gz" else ""
    if len(raw) < 4:
        raise UserError(f"{path}: truncated: {len(raw)} bytes{gz}, too short for an IDX "
                        f"header. {_FIX_FILE}")
    if raw[0] or raw[1]:
        raise UserError(f"{path}: not an IDX file: magic number 0x{raw[:4].hex()} must "
                        f"start with two zero bytes (0x0000080N for uint8). {_FIX_FILE}")
    if raw[2] != 0x08:
        kind = _IDX_TYPES.get(raw[2], "unknown")
        raise UserError(f"{path}: IDX data type code 0x{raw[2]:02x} ({kind}); mnistlab "
                        "reads only 0x08 (uint8) files, the type MNIST ships.")
    ndim, offset = raw[3], 4 + 4 * raw[3]
    if ndim == 0 or len(raw) < offset:
        raise UserError(f"{path}: truncated or bad IDX header: {ndim} dimensions need "
                        f"{offset} header bytes, file holds {len(raw)}{gz}. {_FIX_FILE}")
    dims = struct.unpack(f">{ndim}I", raw[4:offset])
    shape = "x".join(map(str, dims))
    if 0 in dims:
        raise UserError(f"{path}: IDX header says shape {shape}: a zero dimension, so "
                        f"no data. {_FIX_FILE}")
    expected, held = math.prod(dims), len(raw) - offset
    if held != expected:
        problem = "truncated" if held < expected else f"{held - expected} trailing bytes"
        what = {1: "labels", 3: "pixels"}.get(ndim, "data")
        raise UserError(f"{path}: {problem}: header says {shape} = {expected} bytes of "
                        f"{what}, file holds {held}{gz}. {_FIX_FILE}")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file. Check the path, or let mnistlab "
                        "download the dataset.") from None
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError.
        raise UserError(f"{path}: corrupt gzip, cannot decompress ({e}). "
                        f"{_FIX_FILE}") from None


# ----------------------------------------------------------------------- find & verify

def get_info(name: str) -> DatasetInfo:
    """The registry entry for `name`, or a UserError suggesting the closest name."""
    if name in DATASETS:
        return DATASETS[name]
    if name in DERIVED:
        import importlib

        return importlib.import_module(DERIVED[name].builder.split(":")[0]).INFO
    known = [*DATASETS, *DERIVED]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"Unknown dataset {name!r}.{hint} Known datasets: "
                    f"{', '.join(sorted(known))}.")


def cache_dir(name: str) -> Path:
    """Where downloads of `name` go: `$MNISTLAB_CACHE/<name>`, else the OS user cache."""
    root = os.environ.get("MNISTLAB_CACHE")
    return (Path(root).expanduser() if root else Path(pooch.os_cache("mnistlab"))) / name


def _places(name: str, data_dir: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """Local folders to search, in order, each with the reason it is searched."""
    given = [] if data_dir is None else [Path(data_dir).expanduser() / name, Path(data_dir).expanduser()]
    places = [(folder, "--data-dir") for folder in given]  # a parent holding <name>/, or the folder itself
    if os.environ.get("MNISTLAB_DATA"):
        places.append((Path(os.environ["MNISTLAB_DATA"]).expanduser() / name,
                       "$MNISTLAB_DATA"))
    places += [(cache_dir(name), "cache"), (SYSTEM_DIR / name, "Debian package")]
    unique: dict[Path, tuple[Path, str]] = {}
    for folder, why in places:
        unique.setdefault(folder.resolve(), (folder, why))
    return list(unique.values())


# Hashes are remembered in-process, keyed by path, size and mtime. Hashing all files
# costs ~10 ms (MNIST) to ~45 ms (Fashion-MNIST) once per process, measured here: far
# below JAX's start-up, and below gunzip (~0.3 s). A stamp file would need a writable
# spot beside read-only copies (/usr/share, shared folders) and could go stale.
@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int, alg: str) -> str:
    del size, mtime_ns  # Only part of the cache key: a changed file is hashed again.
    return pooch.file_hash(path, alg=alg)


def _hash_of(path: Path, alg: str = "sha256") -> str:
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns, alg)


def _verify(info: DatasetInfo, role: str, path: Path) -> None:
    """Refuses a local file whose hash is not one the registry knows for its role."""
    fname, known = info.files[role]
    for accepted in (known, *info.also_accept.get(role, ())):
        alg, _, value = accepted.partition(":")
        if _hash_of(path, alg) == value.lower():
            return
    digest = _hash_of(path)
    other = [f"{o.name}'s {f}" for o in DATASETS.values() if o.name != info.name
             for f, k in o.files.values() if k == f"sha256:{digest}"]
    fix = (f"It is {other[0]}: point --data-dir at the folder holding {info.name}."
           if other else _FIX_FILE)
    raise UserError(f"{path}: wrong hash: sha256 {digest} is not {info.name}'s {fname} "
                    f"({known}). {fix}")


def _find_local(info: DatasetInfo, data_dir) -> tuple[Path | None, list[str]]:
    """The first folder holding all the files (then verified), and what the others lack."""
    looked = []
    for folder, why in _places(info.name, data_dir):
        missing = [f for f, _ in info.files.values() if not (folder / f).is_file()]
        if not missing:
            for role, (fname, _) in info.files.items():
                _verify(info, role, folder / fname)
            return folder, looked
        wrong = [f"{f} is a folder, not a file" if (folder / f).is_dir() else f"missing {f}" for f in missing]
        state = ", ".join(wrong) if folder.is_dir() else "no such folder"
        looked.append(f"{folder} ({why}): {state}")
    if not os.environ.get("MNISTLAB_DATA"):
        looked.append("$MNISTLAB_DATA: not set")
    return None, looked


def _mirrors(info: DatasetInfo, mirrors) -> tuple[str, ...]:
    """`mirrors=`, else `$MNISTLAB_MIRRORS` (comma/space separated), else the registry's."""
    if mirrors is not None:
        return tuple(mirrors)
    env = os.environ.get("MNISTLAB_MIRRORS", "").replace(",", " ").split()
    return tuple(env) or info.mirrors


def _why(e: Exception) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    if isinstance(e, ValueError):  # Pooch's hash check failed; it deleted the file.
        return "wrong hash, download refused and deleted"
    if type(e).__name__ == "ConnectionError":  # requests': no network, or host down.
        return "cannot connect"
    return f"{type(e).__name__}: {str(e)[:120]}"


class DownloadBar:
    """Pooch's custom progress bar (`total`, `update`, `reset`, `close`) drawn by rich on
    stderr, so a download shows its bar without tqdm.

    The bar appears only once Pooch sets `total`, which it does when it really fetches: a
    file already in the cache shows nothing. `close` may be called again (the caller's,
    after Pooch's own on success) and after a failed download, which Pooch does not close.
    """

    def __init__(self, name: str, console: Console | None = None):
        self.name = name
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            TimeRemainingColumn(), console=console or Console(stderr=True))
        self.task = None

    @property
    def total(self) -> int | None:
        return None if self.task is None else self.bar.tasks[0].total

    @total.setter
    def total(self, size: int) -> None:
        # 0: the server sent no Content-Length; the bar then counts bytes without an end.
        if self.task is None:
            self.task = self.bar.add_task(f"downloading {self.name}", total=size or None)
            self.bar.start()
        else:
            self.bar.update(self.task, total=size or None)

    def update(self, size: int) -> None:
        self.bar.advance(self.task, size)

    def reset(self) -> None:
        # Pooch counts each chunk as a full chunk (its size may differ), then resets and
        # adds the exact total at the end.
        self.bar.reset(self.task)

    def close(self) -> None:
        if self.bar.live.is_started:  # rich's stop writes a blank line to a file even if never started
            self.bar.stop()


def _download(info: DatasetInfo, mirrors: tuple[str, ...]) -> tuple[Path | None, list[str]]:
    """Fetches each file into the cache from the first mirror that serves it intact.

    Pooch streams into a temporary file beside the target and moves it into place only
    once its hash matches, so a failed or corrupt download leaves nothing behind.
    """
    folder, tried = cache_dir(info.name), []
    for fname, known in info.files.values():
        for base in mirrors:
            url = base.rstrip("/") + "/" + fname
            try:
                # A bar on stderr while the file streams in (rich's, not tqdm's).
                with contextlib.closing(DownloadBar(f"{info.name} {fname}")) as bar:
                    pooch.retrieve(url, known_hash=known, fname=fname, path=folder, progressbar=bar)
                break
            except (OSError, ValueError) as e:  # requests' errors are OSErrors.
                tried.append(f"{url}: {_why(e)}")
        else:
            return None, tried or ["no mirrors configured"]
    return folder, tried


def locate_status(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder `load` would read `name` from now, or None if it would download.

    Never downloads. Files found are hash-checked (once per process), so a bad copy
    raises the same UserError as `load`.
    """
    return _find_local(get_info(name), data_dir)[0]


def locate(name: str, data_dir: str | os.PathLike | None = None, *,
           mirrors: tuple[str, ...] | list[str] | None = None) -> Path:
    """The folder holding `name`'s verified files, downloaded into the cache if needed."""
    info = get_info(name)
    folder, looked = _find_local(info, data_dir)
    if folder is not None:
        return folder
    folder, tried = _download(info, _mirrors(info, mirrors))
    if folder is not None:
        return folder
    files = ", ".join(f for f, _ in info.files.values())
    raise UserError(
        f"Dataset {name!r} is not on this machine, and downloading it failed.\n"
        "Looked in:\n  " + "\n  ".join(looked) + "\n"
        "Tried to download:\n  " + "\n  ".join(tried) + "\n"
        f"Fix: pass --data-dir FOLDER (holding {files}, or a parent holding {name}/), "
        f"set MNISTLAB_DATA to a folder holding {name}/, or connect to the network "
        "and run again.")


def load(name: str, data_dir: str | os.PathLike | None = None, *,
         mirrors: tuple[str, ...] | list[str] | None = None) -> Arrays:
    """Finds (or downloads), verifies and reads dataset `name`.

    Args:
      name: a key of `DATASETS`, or of `DERIVED` (built from its base dataset).
      data_dir: `--data-dir`: the folder holding the files, or a parent of `<name>/`.
      mirrors: base URLs to download from instead of `$MNISTLAB_MIRRORS` or the registry's.
    """
    if name in DERIVED:
        return _load_derived(name, data_dir, mirrors)
    folder = locate(name, data_dir, mirrors=mirrors)
    info = get_info(name)
    arrays = {role: read_idx(folder / f) for role, (f, _) in info.files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_split(info, folder, split, images, labels)
    return Arrays(**arrays, info=info, source=folder)


def _check_split(info, folder, split, images, labels) -> None:
    """Images and labels must agree: image shape, counts, labels below num_classes."""
    img, lab = (folder / info.files[f"{split}_{kind}"][0] for kind in ("images", "labels"))
    if images.shape[1:] != info.image_shape:
        raise UserError(f"{img}: images of shape {images.shape[1:]}, {info.name} has "
                        f"{info.image_shape}. {_FIX_FILE}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{lab}: {labels.shape[0]} labels for {len(images)} images in "
                        f"{img.name}; the counts must match. {_FIX_FILE}")
    if labels.max() >= info.num_classes:
        raise UserError(f"{lab}: label {labels.max()} found, {info.name} has "
                        f"{info.num_classes} classes (0..{info.num_classes - 1}). "
                        f"{_FIX_FILE}")


# ----------------------------------------------------------------------------- holdout

def holdout(labels: np.ndarray, fraction: float, *,
            method: Literal["last", "stratified"] = "last",
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Splits sample indices into (train_idx, val_idx), both sorted int64 arrays.

    "last" is Keras' `validation_split`: the last `fraction` of the samples, before any
    shuffling, split at `floor(n * (1 - fraction))` as Keras 3's
    `train_validation_split` does. "stratified" takes the same fraction of every class,
    per-class counts rounded (largest remainder) to total `round(n * fraction)`, chosen
    with `np.random.default_rng(seed)`. `fraction` = 0 holds nothing out.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"validation fraction must be in [0, 1), got {fraction!r}.")
    if method == "last":
        split_at = math.floor(n * (1.0 - fraction))  # n * 1.0 is n: nothing held out at 0
        val = np.arange(split_at, n, dtype=np.int64)
    elif method == "stratified":
        val = _stratified(labels, fraction, seed)
    else:
        raise UserError(f"holdout method must be 'last' or 'stratified', got {method!r}.")
    if fraction and (len(val) == 0 or len(val) == n):
        raise UserError(f"{n} samples are too few to hold out a fraction of {fraction} "
                        "with both sides non-empty: use a larger fraction or more data.")
    train = np.setdiff1d(np.arange(n, dtype=np.int64), val)
    return train, val


def _stratified(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    classes, counts = np.unique(labels, return_counts=True)
    ideal = counts * fraction
    take = np.floor(ideal).astype(np.int64)
    extra = max(round(len(labels) * fraction) - int(take.sum()), 0)
    # Largest remainders get one more; the stable sort breaks ties by class order.
    take[np.argsort(-(ideal - take), kind="stable")[:extra]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
              for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))  # flatnonzero's int64 indices
