"""Tests for mnistlab.data: IDX parsing, lookup order, downloads, holdout splits."""

import functools
import gzip
import hashlib
import http.server
import math
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from mnistlab import data
from mnistlab.errors import UserError

# ------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, *, dtype_code: int = 0x08) -> bytes:
    """IDX encoding written out by hand: 0x00 0x00 type ndim, big-endian dims, data."""
    header = bytes([0, 0, dtype_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def sha256(payload: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload).hexdigest()


# A tiny dataset: 6 train and 3 test images of 28x28, 3 classes.
RNG = np.random.default_rng(0)
TINY_ARRAYS = {
    "train_images": RNG.integers(0, 256, (6, 28, 28), dtype=np.uint8),
    "train_labels": np.array([0, 1, 2, 0, 1, 2], np.uint8),
    "test_images": RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8),
    "test_labels": np.array([2, 1, 0], np.uint8),
}
TINY_FILES = {role: gzip.compress(idx_bytes(a), mtime=0) for role, a in TINY_ARRAYS.items()}
NAMES = dict(zip(data.ROLES, data.IDX_NAMES))


def tiny_info(files=TINY_FILES, mirrors=()) -> data.DatasetInfo:
    return data.DatasetInfo(
        name="tiny", description="test set",
        files={role: (NAMES[role], sha256(files[role])) for role in data.ROLES},
        mirrors=tuple(mirrors), num_classes=3, class_names=("a", "b", "c"))


def write_files(folder: Path, files=TINY_FILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for role, payload in files.items():
        (folder / NAMES[role]).write_bytes(payload)
    return folder


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An isolated world: empty cache, no MNISTLAB_DATA, no system datasets, `tiny` known."""
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNISTLAB_DATA", raising=False)
    monkeypatch.delenv("MNISTLAB_MIRRORS", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_info())
    return tmp_path


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_valid(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    payload = idx_bytes(array)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    path.write_bytes(gzip.compress(payload) if compress else payload)
    got = data.read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    assert got[1, 2, 3] == 23 and got[0, 0, 0] == 0
    np.testing.assert_array_equal(got, array)


GOOD = idx_bytes(np.zeros((2, 3, 4), np.uint8))  # 16-byte header + 24 bytes


@pytest.mark.parametrize("name, payload, expected", [
    ("magic", b"\x01\x00" + GOOD[2:], ["not an IDX file", "0x01000803"]),
    ("dtype", idx_bytes(np.zeros((2, 3, 4)), dtype_code=0x0C), ["type code 0x0c", "int32"]),
    ("truncated", GOOD[:-4], ["truncated", "2x3x4 = 24 bytes of pixels", "holds 20"]),
    ("trailing", GOOD + b"\x00\x00", ["2 trailing bytes", "2x3x4 = 24", "holds 26"]),
    ("zero_dim", idx_bytes(np.zeros((0, 3, 4), np.uint8)), ["shape 0x3x4", "zero dimension"]),
    ("short_header", GOOD[:10], ["truncated or bad IDX header", "16 header bytes"]),
])
def test_read_idx_rejects(tmp_path, name, payload, expected):
    path = tmp_path / f"{name}-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(UserError) as err:
        data.read_idx(path)
    message = str(err.value)
    assert str(path) in message
    for words in expected:
        assert words in message


def test_read_idx_truncated_gzip_says_after_gunzip(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(GOOD[:-1]))
    with pytest.raises(UserError, match=r"truncated.*holds 23 after gunzip"):
        data.read_idx(path)


@pytest.mark.parametrize("payload", [b"not gzip at all", gzip.compress(GOOD, mtime=0)[:-10]],
                         ids=["not-gzip", "cut-short"])
def test_read_idx_corrupt_gzip(tmp_path, payload):
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(payload)
    with pytest.raises(UserError) as err:
        data.read_idx(path)
    assert str(path) in str(err.value) and "corrupt gzip" in str(err.value)


# ---------------------------------------------------------------------- real MNIST

def test_real_mnist(monkeypatch, tmp_path, mnist_root):
    SHARED = mnist_root  # conftest: $MNISTLAB_DATA or ../shared/datasets; fails loudly if absent
    monkeypatch.setenv("MNISTLAB_DATA", str(SHARED))
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path))
    d = data.load("mnist", mirrors=())
    assert d.source == SHARED / "mnist"
    assert d.train_images.shape == (60000, 28, 28) and d.train_images.dtype == np.uint8
    assert d.test_images.shape == (10000, 28, 28) and d.test_labels.shape == (10000,)
    # Values from shared/datasets/mnist/SOURCE.md.
    assert np.bincount(d.train_labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(d.test_labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert d.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert d.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert round(float(d.train_images.mean(dtype=np.float64)), 4) == 33.3184
    assert round(float(d.test_images.mean(dtype=np.float64)), 4) == 33.7912
    assert data.locate_status("mnist") == SHARED / "mnist"


def test_a_folder_where_a_data_file_should_be_is_named_as_such(monkeypatch, tmp_path, mnist_root):
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    names = [name for name, _ in data.get_info("mnist").files.values()]
    for name in names[1:]:
        (folder / name).symlink_to(mnist_root / "mnist" / name)
    (folder / names[0]).mkdir()  # e.g. an archive unpacked in place of the file
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNISTLAB_DATA", raising=False)  # only the folder given: no other copy to fall back on
    with pytest.raises(UserError, match=f"{names[0]} is a folder, not a file"):
        data.load("mnist", tmp_path / "data", mirrors=())


# ------------------------------------------------------------------------ download


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; logs each path; paths under /cut/ send half a file and hang up."""

    def __init__(self, *args, log, **kwargs):
        self.log = log
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.log.append(self.path)
        if self.path.startswith("/cut/"):
            body = TINY_FILES[dict(zip(data.IDX_NAMES, data.ROLES))[self.path[5:]]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server: /good/ (intact files), /bad/ (corrupted), /empty/ (404s)."""
    root = tmp_path / "www"
    write_files(root / "good")
    bad = {role: payload[:-8] + b"\xff" * 8 for role, payload in TINY_FILES.items()}
    write_files(root / "bad", bad)
    (root / "empty").mkdir()
    log: list[str] = []
    handler = functools.partial(_Handler, log=log, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, log
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def cached_files(env: Path) -> list[str]:
    folder = env / "cache" / "tiny"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_lands_in_cache_then_cache_is_used(env, server):
    base, log = server
    d = data.load("tiny", mirrors=[f"{base}/good/"])
    assert d.source == env / "cache" / "tiny"
    assert cached_files(env) == sorted(data.IDX_NAMES)  # Nothing else, no temp files.
    np.testing.assert_array_equal(d.train_images, TINY_ARRAYS["train_images"])
    np.testing.assert_array_equal(d.test_labels, TINY_ARRAYS["test_labels"])
    assert sorted(log) == sorted(f"/good/{n}" for n in data.IDX_NAMES)
    again = data.load("tiny", mirrors=[f"{base}/good/"])
    assert len(log) == 4  # No request the second time.
    assert again.source == env / "cache" / "tiny"


def test_mirrors_from_environment(env, server, monkeypatch):
    base, log = server
    monkeypatch.setenv("MNISTLAB_MIRRORS", f"{base}/empty/, {base}/good/")
    assert data.load("tiny").source == env / "cache" / "tiny"
    assert log.count(f"/empty/{data.IDX_NAMES[0]}") == 1


def test_corrupt_download_is_refused_and_not_kept(env, server):
    base, log = server
    with pytest.raises(UserError) as err:
        data.load("tiny", mirrors=[f"{base}/bad/"])
    message = str(err.value)
    assert f"{base}/bad/{data.IDX_NAMES[0]}: wrong hash" in message
    assert cached_files(env) == []


def test_cut_off_download_leaves_no_partial_file(env, server):
    base, log = server
    with pytest.raises(UserError) as err:
        data.load("tiny", mirrors=[f"{base}/cut/"])
    assert f"{base}/cut/{data.IDX_NAMES[0]}" in str(err.value)
    assert log == [f"/cut/{data.IDX_NAMES[0]}"]
    assert cached_files(env) == []


def test_404_falls_through_to_next_mirror(env, server):
    base, log = server
    d = data.load("tiny", mirrors=[f"{base}/empty/", f"{base}/good/"])
    assert d.source == env / "cache" / "tiny"
    for name in data.IDX_NAMES:
        assert log.index(f"/empty/{name}") < log.index(f"/good/{name}")
    assert cached_files(env) == sorted(data.IDX_NAMES)


def test_all_mirrors_fail_gives_one_message_listing_everything(env, server):
    base, _ = server
    with socket.socket() as s:  # A port nobody listens on.
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    data_dir = env / "mine"
    data_dir.mkdir()
    with pytest.raises(UserError) as err:
        data.load("tiny", data_dir, mirrors=[f"{base}/empty/", dead])
    message = str(err.value)
    first = data.IDX_NAMES[0]
    for place in [data_dir / "tiny", data_dir, env / "cache" / "tiny", env / "system" / "tiny"]:
        assert str(place) in message
    assert f"{base}/empty/{first}: HTTP 404" in message
    assert f"{dead}{first}: " in message
    for fix in ["--data-dir", "MNISTLAB_DATA", "network"]:
        assert fix in message
    assert cached_files(env) == []


# ---------------------------------------------------------------- lookup & checks


def test_lookup_order(env, monkeypatch):
    given, shared, cache = env / "given", env / "shared", env / "cache" / "tiny"
    for folder in (given / "tiny", shared / "tiny", cache):
        write_files(folder)
    monkeypatch.setenv("MNISTLAB_DATA", str(shared))
    assert data.load("tiny", given, mirrors=()).source == given / "tiny"  # parent form
    assert data.load("tiny", given / "tiny", mirrors=()).source == given / "tiny"
    assert data.load("tiny", env / "nothing", mirrors=()).source == shared / "tiny"
    monkeypatch.delenv("MNISTLAB_DATA")
    assert data.load("tiny", mirrors=()).source == cache
    assert data.locate_status("tiny") == cache
    for path in cache.iterdir():
        path.unlink()
    write_files(env / "system" / "tiny")
    assert data.locate_status("tiny") == env / "system" / "tiny"


def test_locate_status_none_without_downloading(env):
    assert data.locate_status("tiny") is None
    assert not (env / "cache").exists()


def test_wrong_hash_in_local_folder_is_refused(env):
    folder = write_files(env / "mine")
    bad = folder / NAMES["test_labels"]
    bad.write_bytes(gzip.compress(idx_bytes(np.array([1, 1, 1], np.uint8)), mtime=0))
    with pytest.raises(UserError) as err:
        data.load("tiny", folder, mirrors=())
    assert str(bad) in str(err.value) and "wrong hash" in str(err.value)


def test_other_datasets_file_is_named(env, monkeypatch):
    folder = write_files(env / "mine")
    other = data.DatasetInfo(name="other", description="", files={
        r: (NAMES[r], "sha256:" + "0" * 64) for r in data.ROLES},
        mirrors=(), num_classes=3, class_names=("a", "b", "c"))
    monkeypatch.setitem(data.DATASETS, "other", other)
    with pytest.raises(UserError, match=r"It is tiny's train-images-idx3-ubyte.gz"):
        data.load("other", folder, mirrors=())


@pytest.mark.parametrize("role, array, words", [
    ("train_labels", np.array([0, 1, 2, 0, 1, 3], np.uint8), "label 3 found"),
    ("test_labels", np.array([0, 1], np.uint8), "2 labels for 3 images"),
    ("test_images", np.zeros((3, 28, 27), np.uint8), "images of shape (28, 27)"),
])
def test_cross_checks(env, monkeypatch, role, array, words):
    files = dict(TINY_FILES, **{role: gzip.compress(idx_bytes(array), mtime=0)})
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_info(files))
    folder = write_files(env / "mine", files)
    with pytest.raises(UserError) as err:
        data.load("tiny", folder, mirrors=())
    assert words in str(err.value) and str(folder) in str(err.value)


def test_unknown_name_suggests():
    with pytest.raises(UserError) as err:
        data.load("fashon-mnist")
    message = str(err.value)
    assert "Did you mean 'fashion-mnist'?" in message
    assert "fashion-mnist, kmnist, mnist" in message


def test_registry_is_complete():
    for info in data.DATASETS.values():
        assert set(info.files) == set(data.ROLES)
        assert len(info.class_names) == info.num_classes and info.mirrors
        for _, known in info.files.values():
            alg, _, value = known.partition(":")
            assert (alg, len(value)) in {("sha256", 64), ("md5", 32)}


# ------------------------------------------------------------------------- holdout


def test_holdout_last_is_keras_validation_split():
    train, val = data.holdout(np.zeros(10), 0.25, method="last", seed=0)
    assert train.tolist() == [0, 1, 2, 3, 4, 5, 6] and val.tolist() == [7, 8, 9]
    train, val = data.holdout(np.zeros(60000), 0.1, method="last", seed=0)
    assert (len(train), len(val), val[0]) == (54000, 6000, 54000)
    train, val = data.holdout(np.zeros(7), 0.3, method="last", seed=0)
    assert len(train) == math.floor(7 * 0.7) == 4 and len(val) == 3
    train, val = data.holdout(np.zeros(5), 0.0, method="last", seed=0)
    assert train.tolist() == [0, 1, 2, 3, 4] and val.tolist() == []


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_holdout_rejects_fraction(fraction):
    with pytest.raises(UserError, match="must be in \\[0, 1\\)"):
        data.holdout(np.zeros(10), fraction, method="last", seed=0)


def test_holdout_rejects_too_few_samples():
    with pytest.raises(UserError, match="too few"):
        data.holdout(np.zeros(1), 0.5, method="last", seed=0)


def test_holdout_stratified_proportions():
    labels = np.repeat(np.array([2, 0, 1]), [50, 30, 20])
    np.random.default_rng(1).shuffle(labels)
    train, val = data.holdout(labels, 0.1, method="stratified", seed=3)
    assert np.bincount(labels[val]).tolist() == [3, 2, 5]  # 10% of 30, 20, 50
    assert len(val) == 10 and len(train) == 90
    assert np.intersect1d(train, val).size == 0
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    assert (np.diff(val) > 0).all() and (np.diff(train) > 0).all()
    again = data.holdout(labels, 0.1, method="stratified", seed=3)[1]
    other = data.holdout(labels, 0.1, method="stratified", seed=4)[1]
    assert again.tolist() == val.tolist() and other.tolist() != val.tolist()


def test_holdout_stratified_rounding():
    # Ideal 2.1 and 1.5 per class; total round(3.6) = 4; the larger remainder gets +1.
    labels = np.array([0] * 7 + [1] * 5)
    _, val = data.holdout(labels, 0.3, method="stratified", seed=0)
    assert np.bincount(labels[val], minlength=2).tolist() == [2, 2]
    # Ideal 1.5 each; total round(4.5) = 4 (Python rounds half to even); ties by class.
    labels = np.array([0, 1, 2] * 3)
    _, val = data.holdout(labels, 0.5, method="stratified", seed=0)
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 1]
