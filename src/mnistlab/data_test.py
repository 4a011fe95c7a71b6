"""Tests for mnistlab.data: IDX parsing, lookup order, downloads, holdout splits."""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import math
import os
import re
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

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


FIX = "Delete it and let mnistlab download it again, or point --data-dir at a good copy."


@pytest.mark.parametrize("name, payload, expected", [
    ("magic", b"\x01\x00" + GOOD[2:],
     f"not an IDX file: magic number 0x01000803 must start with two zero bytes (0x0000080N for uint8). {FIX}"),
    ("dtype", idx_bytes(np.zeros((2, 3, 4)), dtype_code=0x0C),
     "IDX data type code 0x0c (int32); mnistlab reads only 0x08 (uint8) files, the type MNIST ships."),
    ("unknown_dtype", idx_bytes(np.zeros((2, 3, 4)), dtype_code=0x07),
     "IDX data type code 0x07 (unknown); mnistlab reads only 0x08 (uint8) files, the type MNIST ships."),
    ("short", GOOD[:3], f"truncated: 3 bytes, too short for an IDX header. {FIX}"),
    ("header_only", GOOD[:4], f"truncated or bad IDX header: 3 dimensions need 16 header bytes, file holds 4. {FIX}"),
    ("truncated", GOOD[:-4], f"truncated: header says 2x3x4 = 24 bytes of pixels, file holds 20. {FIX}"),
    ("trailing", GOOD + b"\x00\x00", f"2 trailing bytes: header says 2x3x4 = 24 bytes of pixels, file holds 26. {FIX}"),
    ("labels", idx_bytes(np.zeros(5, np.uint8))[:-1], f"truncated: header says 5 = 5 bytes of labels, file holds 4. {FIX}"),
    ("matrix", idx_bytes(np.zeros((2, 3), np.uint8))[:-1], f"truncated: header says 2x3 = 6 bytes of data, file holds 5. {FIX}"),
    ("zero_dim", idx_bytes(np.zeros((0, 3, 4), np.uint8)),
     f"IDX header says shape 0x3x4: a zero dimension, so no data. {FIX}"),
])
def test_read_idx_rejects(tmp_path, name, payload, expected):
    path = tmp_path / f"{name}-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(UserError) as err:
        data.read_idx(path)
    assert str(err.value) == f"{path}: {expected}"


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
    with pytest.raises(UserError) as err:
        data.load("mnist", tmp_path / "data", mirrors=())
    assert f"\n  {folder} (--data-dir): {names[0]} is a folder, not a file\n" in str(err.value)
    assert f"\n  {tmp_path / 'data'} (--data-dir): {', '.join(f'missing {n}' for n in names)}\n" in str(err.value)


def test_the_folder_mnistlab_data_names_is_listed_where_it_was_looked_in(env, monkeypatch):
    monkeypatch.setenv("MNISTLAB_DATA", str(env / "shared"))
    with pytest.raises(UserError) as err:
        data.load("tiny")
    assert f"Looked in:\n  {env / 'shared' / 'tiny'} ($MNISTLAB_DATA): no such folder\n  {env / 'cache'}" in str(err.value)
    assert "$MNISTLAB_DATA: not set" not in str(err.value)


def test_downloads_go_to_the_user_cache_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("MNISTLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the user cache on Linux (XDG base directories)
    assert data.cache_dir("mnist") == tmp_path / "mnistlab" / "mnist"


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


def test_a_download_shows_a_bar_of_its_bytes_on_stderr(env, server, monkeypatch):
    base, _ = server
    written = io.StringIO()
    bars = []

    class Recorded(data.DownloadBar):
        """Keeps what Pooch sent: each update since the last reset."""

        def __init__(self, name):
            super().__init__(name, Console(file=written, force_terminal=True, width=200))
            self.updates = []
            bars.append(self)

        def update(self, size):
            self.updates.append(size)
            super().update(size)

        def reset(self):
            self.updates = []
            super().reset()

    monkeypatch.setattr(data, "DownloadBar", Recorded)
    data.load("tiny", mirrors=[f"{base}/good/"])
    assert [b.name for b in bars] == [f"tiny {n}" for n in data.IDX_NAMES]
    for bar, role in zip(bars, data.ROLES):
        size = len(TINY_FILES[role])
        (task,) = bar.bar.tasks
        assert bar.total == task.total == size  # Pooch's Content-Length
        assert sum(bar.updates) == task.completed == size
        assert not bar.bar.live.is_started  # closed
    shown = written.getvalue()
    assert all(f"downloading tiny {n}" in shown for n in data.IDX_NAMES)
    bars.clear()
    data.load("tiny", mirrors=[f"{base}/good/"])  # from the cache: no bar
    assert bars == [] and written.getvalue() == shown


def test_a_failed_download_s_bar_is_closed(env, server, monkeypatch):
    base, _ = server
    bars, original = [], data.DownloadBar

    def recorded(name):
        bars.append(original(name, Console(file=io.StringIO(), force_terminal=True)))
        return bars[-1]

    monkeypatch.setattr(data, "DownloadBar", recorded)
    with pytest.raises(UserError):
        data.load("tiny", mirrors=[f"{base}/cut/"])  # half the file, then the server hangs up
    # Pooch closes only a bar whose download ended well; its live display (a thread) must not outlive it.
    (bar,) = bars
    assert bar.task is not None and not bar.bar.live.is_started


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
    files = ", ".join(data.IDX_NAMES)
    missing = ", ".join(f"missing {name}" for name in data.IDX_NAMES)
    first = data.IDX_NAMES[0]
    assert str(err.value) == (
        "Dataset 'tiny' is not on this machine, and downloading it failed.\n"
        "Looked in:\n"
        f"  {data_dir / 'tiny'} (--data-dir): no such folder\n"
        f"  {data_dir} (--data-dir): {missing}\n"
        f"  {env / 'cache' / 'tiny'} (cache): no such folder\n"
        f"  {env / 'system' / 'tiny'} (Debian package): no such folder\n"
        "  $MNISTLAB_DATA: not set\n"
        "Tried to download:\n"
        f"  {base}/empty/{first}: HTTP 404\n"
        f"  {dead}{first}: cannot connect\n"
        f"Fix: pass --data-dir FOLDER (holding {files}, or a parent holding tiny/), set MNISTLAB_DATA to a "
        "folder holding tiny/, or connect to the network and run again.")
    assert cached_files(env) == []


def test_no_mirror_at_all_is_said_so(env):
    # tiny's registry entry names no mirror, and the environment none either
    with pytest.raises(UserError, match="\nTried to download:\n  no mirrors configured\nFix:"):
        data.load("tiny")


def test_a_missing_idx_file_is_named(tmp_path):
    with pytest.raises(UserError) as err:
        data.read_idx(tmp_path / "gone-idx1-ubyte")
    assert str(err.value) == f"{tmp_path / 'gone-idx1-ubyte'}: no such file. Check the path, or let mnistlab download the dataset."


def test_without_mirrors_or_environment_the_registry_s_mirrors_are_used(env):
    info = tiny_info(mirrors=("https://a.example/", "https://b.example/"))
    assert data._mirrors(info, None) == ("https://a.example/", "https://b.example/")


def test_a_download_error_of_another_kind_is_named_and_cut_at_120_characters():
    assert data._why(PermissionError("x" * 200)) == "PermissionError: " + "x" * 120


def test_locate_status_looks_in_the_given_folder_first(env):
    write_files(env / "mine" / "tiny")
    assert data.locate_status("tiny", env / "mine") == env / "mine" / "tiny"


def doubled(base: data.Arrays) -> data.Arrays:
    """A derived dataset for the test below: every image twice as wide."""
    wide = {split: np.concatenate([getattr(base, split)] * 2, axis=-1) for split in ("train_images", "test_images")}
    return dataclasses.replace(base, **wide)


def test_a_derived_dataset_is_built_from_its_base_found_where_load_was_told(env, server, monkeypatch):
    monkeypatch.setitem(data.DERIVED, "tiny-wide", data.Derived("tiny", f"{__name__}:doubled", "test"))
    base, _ = server
    wide = data.load("tiny-wide", mirrors=[f"{base}/good/"])  # downloaded from the mirror given
    assert wide.source == env / "cache" / "tiny"
    np.testing.assert_array_equal(wide.train_images, np.concatenate([TINY_ARRAYS["train_images"]] * 2, axis=-1))
    write_files(env / "mine" / "tiny")
    assert data.load("tiny-wide", env / "mine", mirrors=()).source == env / "mine" / "tiny"


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


@pytest.mark.parametrize("change", ["size, same mtime", "one byte, same size"])
def test_a_file_changed_in_place_is_hashed_again(env, change):
    folder = write_files(env / "mine")
    data.load("tiny", folder, mirrors=())  # its hashes are now remembered
    path = folder / NAMES["test_labels"]
    before = path.stat()
    if change == "size, same mtime":
        path.write_bytes(path.read_bytes() + b"\0")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        payload = bytearray(path.read_bytes())
        payload[len(payload) // 2] ^= 0xFF
        path.write_bytes(payload)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    with pytest.raises(UserError, match="wrong hash"):
        data.load("tiny", folder, mirrors=())


def test_loaded_arrays_carry_their_dataset_s_description(env):
    folder = write_files(env / "mine")
    assert data.load("tiny", folder, mirrors=()).info == data.DATASETS["tiny"]


def test_a_copy_the_registry_also_accepts_is_read(env, monkeypatch):
    # Debian's re-gzipped Fashion-MNIST: other bytes, the same IDX data, accepted by hash
    regzipped = dict(TINY_FILES, test_labels=gzip.compress(idx_bytes(TINY_ARRAYS["test_labels"]), mtime=1))
    info = dataclasses.replace(tiny_info(), also_accept={"test_labels": (sha256(regzipped["test_labels"]),)})
    monkeypatch.setitem(data.DATASETS, "tiny", info)
    folder = write_files(env / "mine", regzipped)
    np.testing.assert_array_equal(data.load("tiny", folder, mirrors=()).test_labels, TINY_ARRAYS["test_labels"])


def test_an_md5_in_the_registry_is_checked_as_md5(env, monkeypatch):
    md5 = {role: (NAMES[role], "md5:" + hashlib.md5(TINY_FILES[role]).hexdigest()) for role in data.ROLES}
    monkeypatch.setitem(data.DATASETS, "tiny", dataclasses.replace(tiny_info(), files=md5))
    folder = write_files(env / "mine")
    assert data.load("tiny", folder, mirrors=()).source == folder


def test_other_datasets_file_is_named(env, monkeypatch):
    folder = write_files(env / "mine")
    other = data.DatasetInfo(name="other", description="", files={
        r: (NAMES[r], "sha256:" + "0" * 64) for r in data.ROLES},
        mirrors=(), num_classes=3, class_names=("a", "b", "c"))
    monkeypatch.setitem(data.DATASETS, "other", other)
    with pytest.raises(UserError, match=r"It is tiny's train-images-idx3-ubyte.gz"):
        data.load("other", folder, mirrors=())


@pytest.mark.parametrize("role, array, message", [
    ("train_labels", np.array([0, 1, 2, 0, 1, 3], np.uint8),
     f"train-labels-idx1-ubyte.gz: label 3 found, tiny has 3 classes (0..2). {FIX}"),
    ("test_labels", np.array([0, 1], np.uint8),
     f"t10k-labels-idx1-ubyte.gz: 2 labels for 3 images in t10k-images-idx3-ubyte.gz; the counts must match. {FIX}"),
    ("test_images", np.zeros((3, 28, 27), np.uint8),
     f"t10k-images-idx3-ubyte.gz: images of shape (28, 27), tiny has (28, 28). {FIX}"),
])
def test_cross_checks(env, monkeypatch, role, array, message):
    files = dict(TINY_FILES, **{role: gzip.compress(idx_bytes(array), mtime=0)})
    monkeypatch.setitem(data.DATASETS, "tiny", tiny_info(files))
    folder = write_files(env / "mine", files)
    with pytest.raises(UserError) as err:
        data.load("tiny", folder, mirrors=())
    assert str(err.value) == f"{folder}/{message}"


@pytest.mark.parametrize("name, hint", [
    ("fashon-mnist", " Did you mean 'fashion-mnist'?"),
    ("mnist_fashion", " Did you mean 'mnist'?"),  # similarity 0.56: over the cutoff of 0.5
    ("cifar", ""),
])
def test_unknown_name_suggests(name, hint):
    with pytest.raises(UserError) as err:
        data.load(name)
    assert str(err.value) == f"Unknown dataset {name!r}.{hint} Known datasets: fashion-mnist, kmnist, mnist, mnist-multi."


def test_a_derived_dataset_describes_itself():
    from mnistlab import multilabel

    assert data.get_info("mnist-multi") is multilabel.INFO


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


def test_holdout_defaults_to_keras_split_and_seed_0():
    labels = np.repeat(np.arange(4), 5)
    np.testing.assert_array_equal(data.holdout(labels, 0.2)[1], np.arange(16, 20))
    for got, expected in zip(data.holdout(labels, 0.4, method="stratified"),
                             data.holdout(labels, 0.4, method="stratified", seed=0)):
        np.testing.assert_array_equal(got, expected)


def test_holdout_may_hold_out_one_sample_but_not_none_or_all():
    np.testing.assert_array_equal(data.holdout(np.zeros(10), 0.1)[1], [9])
    with pytest.raises(UserError) as err:
        data.holdout(np.zeros(10), 0.01, method="stratified")  # round(0.1) = 0 samples
    assert str(err.value) == ("10 samples are too few to hold out a fraction of 0.01 with both sides non-empty: "
                              "use a larger fraction or more data.")
    with pytest.raises(UserError) as err:
        data.holdout(np.zeros(10), 0.1, method="random")
    assert str(err.value) == "holdout method must be 'last' or 'stratified', got 'random'."


def test_holdout_stratified_takes_each_sample_at_most_once():
    labels = np.repeat(np.arange(10), 10)
    _, val = data.holdout(labels, 0.5, method="stratified", seed=3)
    assert len(np.unique(val)) == len(val) == 50


def test_holdout_stratified_rounding():
    # Ideal 2.1 and 1.5 per class; total round(3.6) = 4; the larger remainder gets +1.
    labels = np.array([0] * 7 + [1] * 5)
    _, val = data.holdout(labels, 0.3, method="stratified", seed=0)
    assert np.bincount(labels[val], minlength=2).tolist() == [2, 2]
    # Ideal 1.5 each; total round(4.5) = 4 (Python rounds half to even); ties by class.
    labels = np.array([0, 1, 2] * 3)
    _, val = data.holdout(labels, 0.5, method="stratified", seed=0)
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 1]


def test_the_download_bar_draws_name_bar_bytes_speed_and_time_left_on_stderr(capsys):
    # Pooch's calls as on a real download of 2 MB, half a second apart; with no console
    # given, the bar goes to stderr (stdout stays for what a command prints).
    bar = data.DownloadBar("tiny labels")
    bar.total = 2_000_000
    bar.update(1_000_000)
    time.sleep(0.2)
    bar.update(500_000)
    bar.close()
    shown = capsys.readouterr()
    assert shown.out == ""
    assert re.fullmatch(r"downloading tiny labels [━╸╺ ]*━[━╸╺ ]* 1\.5/2\.0 MB [\d.]+ [kM]?B/s \d:\d\d:\d\d\n",
                        shown.err), shown.err
