"""Datasets: IDX files, the embedded digits, MNIST lookup/download/verification, user files."""

import gzip
import hashlib
import os

import numpy as np
import pytest

from gpubp.datasets import (
    MinMaxScaler,
    StandardScaler,
    load_dataset,
    load_digits,
    load_file,
    load_mnist,
    mnist,
    parse_idx,
    read_idx,
    write_idx,
)
from gpubp.errors import DataError

# ---- IDX -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_idx_round_trip(tmp_path, dtype, compress, rng):
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    data = write_idx(array)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("data,message", [
    (b"", "not an IDX file"),
    (b"\x01\x00\x08\x01\0\0\0\x01x", "not an IDX file"),
    (b"\0\0\x07\x01\0\0\0\x01x", "unknown IDX element type 0x07"),
    (b"\0\0\x08\x00", "declares 0 dimensions"),
    (b"\0\0\x08\x02\0\0\0\x02", "truncated IDX header"),
    (b"\0\0\x08\x01\0\0\0\x05abc", "truncated: header claims shape (5,)"),
    (b"\0\0\x08\x01\0\0\0\x02abc", "has trailing bytes"),
])
def test_idx_rejects_malformed_data(data, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_idx(data)


def test_idx_false_size_claim_allocates_nothing(tmp_path):
    """A header claiming ~10^12 images of 28×28 fails on the bytes actually present."""
    header = b"\0\0\x08\x03" + np.array([10**9 * 4, 28, 28], dtype=">u4").tobytes()
    path = tmp_path / "huge.gz"
    path.write_bytes(gzip.compress(header + b"\0" * 100))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_idx_corrupt_gzip_is_a_data_error(tmp_path):
    good = gzip.compress(write_idx(np.arange(1000, dtype=np.uint8)))
    path = tmp_path / "bad.gz"
    path.write_bytes(good[:len(good) // 2])
    with pytest.raises(DataError, match="corrupt gzip data"):
        read_idx(path)


# ---- digits --------------------------------------------------------------------------

def test_digits_are_embedded_and_split_stratified():
    data = load_digits()
    assert data.X_train.shape == (1438, 64) and data.X_test.shape == (359, 64)
    assert data.X_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert 0.0 <= data.X_train.min() and data.X_train.max() <= 1.0
    assert data.n_classes == 10 and data.n_features == 64
    counts = np.bincount(data.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37
    again = load_digits()
    np.testing.assert_array_equal(data.X_test, again.X_test)
    other = load_digits(split_seed=5)
    assert not np.array_equal(data.y_test, other.y_test)


# ---- MNIST: local files --------------------------------------------------------------

def test_load_real_mnist(mnist_dir, isolated_env):
    data = load_mnist(mnist_dir, download=False)
    assert data.X_train.shape == (60000, 784) and data.X_test.shape == (10000, 784)
    assert data.X_train.dtype == np.float32 and 0 <= data.X_train.min() < data.X_train.max() <= 1
    assert np.bincount(data.y_train).tolist()[:3] == [5923, 6742, 5958]
    assert data.y_test[:5].tolist() == [7, 2, 1, 0, 4]


def test_mnist_found_through_environment_and_raw_files(mnist_dir, isolated_env, monkeypatch):
    folder = isolated_env / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in (mnist.TRAIN_IMAGES, mnist.TRAIN_LABELS, mnist.TEST_IMAGES, mnist.TEST_LABELS):
        (folder / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    monkeypatch.setenv(mnist.DATA_ENV, str(isolated_env / "data"))
    data = load_mnist(download=False)
    assert data.X_test.shape == (10000, 784)


def test_mnist_file_with_wrong_checksum_is_never_used(mnist_dir, isolated_env):
    folder = isolated_env / "mnist"
    folder.mkdir()
    for name in os.listdir(mnist_dir):
        if name.endswith(".gz"):
            (folder / name).write_bytes((mnist_dir / name).read_bytes())
    labels = folder / f"{mnist.TEST_LABELS}.gz"
    corrupt = bytearray(labels.read_bytes())
    corrupt[100] ^= 1
    labels.write_bytes(bytes(corrupt))
    with pytest.raises(DataError, match="does not match the published"):
        load_mnist(folder, download=True, mirrors=["http://127.0.0.1:9/never-asked"])


def test_missing_mnist_without_download_is_a_clear_error(isolated_env):
    with pytest.raises(DataError, match="not found .* download=False"):
        load_mnist(isolated_env / "empty", download=False)


# ---- MNIST: download from a loopback server ------------------------------------------

def test_fetch_file_verifies_and_falls_back_across_mirrors(tmp_path, serve):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    payload = gzip.compress(write_idx(np.arange(100, dtype=np.uint8)))
    (good / "x.gz").write_bytes(payload)
    (bad / "x.gz").write_bytes(payload[:-1] + b"!")  # served, but the wrong bytes
    digest = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "dest"
    mirrors = [serve(tmp_path / "missing"), serve(bad), serve(good)]
    path = mnist.fetch_file("x.gz", digest, dest, mirrors)
    assert path == dest / "x.gz" and path.read_bytes() == payload
    assert sorted(p.name for p in dest.iterdir()) == ["x.gz"]  # no partial files left


def test_fetch_file_failing_everywhere_names_each_mirror(tmp_path, serve):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.gz").write_bytes(b"not it")
    mirrors = [serve(tmp_path / "bad"), "http://127.0.0.1:9/"]
    with pytest.raises(DataError) as info:
        mnist.fetch_file("x.gz", "0" * 64, tmp_path / "dest", mirrors)
    message = str(info.value)
    assert "sha256" in message and "127.0.0.1:9" in message
    assert list((tmp_path / "dest").iterdir()) == []


def test_load_mnist_downloads_into_the_cache(mnist_dir, isolated_env, serve, monkeypatch):
    monkeypatch.setenv(mnist.MIRRORS_ENV, f"http://127.0.0.1:9/, {serve(mnist_dir)}")
    data = load_mnist()
    assert data.X_train.shape == (60000, 784)
    cache = isolated_env / "cache" / "gpubp" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(n for n in mnist.SHA256 if n.endswith(".gz"))
    # Second time, from the cache, with no server at all.
    monkeypatch.setenv(mnist.MIRRORS_ENV, "http://127.0.0.1:9/")
    np.testing.assert_array_equal(load_mnist().y_test, data.y_test)


def test_load_mnist_downloads_synthetic_files_end_to_end(isolated_env, serve, monkeypatch, rng):
    """The whole lookup → download → verify → parse path, on small stand-in files whose
    sums replace the published ones (so it runs without the real MNIST)."""
    served = isolated_env / "served"
    served.mkdir()
    sums, arrays = dict(mnist.SHA256), {}
    for name, n in [(mnist.TRAIN_IMAGES, 12), (mnist.TEST_IMAGES, 5)]:
        arrays[name] = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
    arrays[mnist.TRAIN_LABELS] = np.arange(12, dtype=np.uint8) % 10
    arrays[mnist.TEST_LABELS] = np.arange(5, dtype=np.uint8)
    for name, array in arrays.items():
        payload = gzip.compress(write_idx(array))
        (served / f"{name}.gz").write_bytes(payload)
        sums[f"{name}.gz"] = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(mnist, "SHA256", sums)
    data = load_mnist(isolated_env / "empty", mirrors=["not a url", serve(served)])
    assert data.X_train.shape == (12, 784) and data.y_test.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(data.X_test * 255, arrays[mnist.TEST_IMAGES].reshape(5, -1))
    cache = isolated_env / "cache" / "gpubp" / "mnist"  # downloads go to the cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in arrays)
    assert all(p.stat().st_mode & 0o044 for p in cache.iterdir())  # umask, not 0600


# ---- user files ----------------------------------------------------------------------

def test_npz_and_csv_files(tmp_path, rng):
    X = rng.normal(size=(40, 3))
    y = np.repeat([3, 7], 20)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    data = load_file(tmp_path / "d.npz", test_fraction=0.25)
    assert data.X_train.shape == (30, 3) and data.X_test.shape == (10, 3)
    assert data.classes.tolist() == [3, 7] and set(data.y_test.tolist()) == {0, 1}

    lines = ["a,label,b,c"] + [f"{r[0]},{lab},{r[1]},{r[2]}" for r, lab in zip(X, y)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    csv_data = load_dataset(str(tmp_path / "d.csv"))
    assert csv_data.n_features == 3 and csv_data.classes.tolist() == [3, 7]
    both = np.concatenate([csv_data.X_train, csv_data.X_test])
    np.testing.assert_allclose(np.sort(both[:, 0]), np.sort(X[:, 0]).astype(np.float32))


def test_npz_with_its_own_split(tmp_path, rng):
    np.savez(tmp_path / "s.npz", X_train=rng.normal(size=(8, 2)), y_train=np.arange(8) % 2,
             X_test=rng.normal(size=(4, 2)), y_test=np.arange(4) % 2)
    data = load_file(tmp_path / "s.npz")
    assert data.X_train.shape == (8, 2) and data.X_test.shape == (4, 2)


def test_string_labels_in_csv(tmp_path):
    (tmp_path / "s.csv").write_text("x,label\n1,cat\n2,dog\n3,cat\n4,dog\n5,cat\n6,dog\n")
    data = load_file(tmp_path / "s.csv", test_fraction=0.34)
    assert data.classes.tolist() == ["cat", "dog"]


@pytest.mark.parametrize("content,message", [
    ("", "empty CSV file"),
    ("x,y\n1,2\n", "no label column 'label'"),
    ("x,label\n1,0\n2\n", ":3: 1 fields, header has 2"),
    ("x,label\nabc,0\n", "non-numeric feature value"),
])
def test_bad_csv_is_a_data_error(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        load_file(tmp_path / "bad.csv")


def test_missing_user_file_is_file_not_found(tmp_path):
    for name in ("none.npz", "none.csv"):
        with pytest.raises(FileNotFoundError):
            load_file(tmp_path / name)


def test_bad_npz_is_a_data_error(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_file(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", X=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="not a readable .npz"):  # pickled objects refused
        load_file(tmp_path / "obj.npz")
    np.savez(tmp_path / "short.npz", X=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(DataError, match="one label per row"):
        load_file(tmp_path / "short.npz")
    with pytest.raises(ValueError, match="dataset: expected 'digits', 'mnist' or a .npz/.csv"):
        load_dataset("nope.txt")


def write_npz(path, method, **arrays):
    """An .npz whose members are compressed with zipfile's ``method``."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{name}.npy", buffer.getvalue())


@pytest.mark.parametrize("method", ["ZIP_STORED", "ZIP_DEFLATED", "ZIP_BZIP2", "ZIP_LZMA"])
@pytest.mark.parametrize("order", "CF")
def test_npz_rows_stream_block_by_block_equal_to_the_whole(tmp_path, rng, method, order):
    import zipfile

    from gpubp.datasets.npz import iter_npz_rows, read_npz

    X = np.asarray(rng.normal(size=(1003, 7)), order=order)
    write_npz(tmp_path / "x.npz", getattr(zipfile, method), X=X, empty=np.zeros((0, 7)))
    blocks = list(iter_npz_rows(tmp_path / "x.npz", "X", 100))
    assert [len(b) for b in blocks] == [100] * 10 + [3]
    np.testing.assert_array_equal(np.concatenate(blocks), read_npz(tmp_path / "x.npz", ["X"])["X"])
    assert [b.shape for b in iter_npz_rows(tmp_path / "x.npz", "empty", 100)] == [(0, 7)]


def test_npz_rows_stream_in_bounded_memory_and_find_a_cut_member(tmp_path):
    import tracemalloc
    import zipfile

    from gpubp.datasets.npz import iter_npz_rows

    X = np.arange(40_000 * 64, dtype=np.float64).reshape(40_000, 64)  # 20 MB
    write_npz(tmp_path / "big.npz", zipfile.ZIP_DEFLATED, X=X)
    tracemalloc.start()
    total = sum(float(block[:, 0].sum()) for block in iter_npz_rows(tmp_path / "big.npz", "X", 500))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == float(X[:, 0].sum())
    assert peak < 2 << 20, peak  # a few 256 KB blocks, not the 20 MB array
    write_npz(tmp_path / "cut.npz", zipfile.ZIP_STORED, X=X)
    cut = bytearray((tmp_path / "cut.npz").read_bytes())
    cut[len(cut) // 2] ^= 0xFF  # one flipped byte mid-member: found by the CRC at the end
    (tmp_path / "bad.npz").write_bytes(bytes(cut))
    with pytest.raises(DataError, match="not a readable .npz archive"):
        for _ in iter_npz_rows(tmp_path / "bad.npz", "X", 500):
            pass
    with pytest.raises(DataError, match="must be a 2-D array"):
        np.savez(tmp_path / "v.npz", X=np.zeros(5))
        next(iter_npz_rows(tmp_path / "v.npz", "X", 10))


def test_a_spooled_npz_is_the_concatenation_written_without_holding_it(tmp_path, rng):
    import tracemalloc

    from gpubp.datasets.npz import SpooledNpz

    blocks = [rng.normal(size=(n, 10)) for n in (1000,) * 20 + (0, 7)]
    labels = [np.array(["cat", "bird", "dog"] * 4)[:n].astype("<U4") for n in (12, 0, 5)]
    with SpooledNpz() as spool:
        tracemalloc.start()
        for block in blocks:
            spool.add("proba", block)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        for block in labels:
            spool.add("labels", block)
        with pytest.raises(ValueError, match="a block of float32"):
            spool.add("proba", np.zeros((2, 10), np.float32))
        with open(tmp_path / "out.npz", "wb") as f:
            spool.write(f, classes=np.array(["bird", "cat", "dog"]))
    assert peak < 1 << 20, peak  # the 1.6 MB written went to disk
    with np.load(tmp_path / "out.npz", allow_pickle=False) as saved:
        assert sorted(saved.files) == ["classes", "labels", "proba"]
        np.testing.assert_array_equal(saved["proba"], np.concatenate(blocks))
        np.testing.assert_array_equal(saved["labels"], np.concatenate(labels))
        assert saved["classes"].tolist() == ["bird", "cat", "dog"]


def test_an_npz_header_whose_keys_mix_bytes_and_str_is_a_data_error(tmp_path):
    """Found by bench.fuzz_loaders (2026-11-29-amd-fuzz-loaders-r2.json): a y.npy header
    {'descr': '<U3', b'fortran_order': False, ...} made NumPy's parser raise TypeError."""
    import io
    import zipfile

    body = (b"{'descr': '<U3', b'fortran_order': False, 'shape': (2,), }").ljust(117) + b"\n"
    member = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + bytes(24)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 3)))
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("X.npy", buffer.getvalue())
        archive.writestr("y.npy", member)
    with pytest.raises(DataError, match="not a readable .npz archive .*malformed .npy header"):
        load_file(tmp_path / "d.npz")


def test_scalers(rng):
    X = rng.normal(loc=5, scale=3, size=(100, 4))
    X[:, 2] = 7.0  # a constant feature
    Z = StandardScaler().fit_transform(X)
    np.testing.assert_allclose(Z[:, [0, 1, 3]].mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(Z[:, [0, 1, 3]].std(axis=0), 1, rtol=1e-5)
    assert (Z[:, 2] == 0).all() and Z.dtype == np.float32
    M = MinMaxScaler().fit_transform(X)
    assert M.min() == 0.0 and M[:, [0, 1, 3]].max(axis=0).tolist() == [1.0, 1.0, 1.0]
