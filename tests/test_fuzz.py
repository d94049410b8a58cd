"""Hostile files: every loader of a user's file either loads it or raises a gpubp error
that is a ValueError, within a memory bound proportional to the file. A short, seeded
hypothesis run per loader (bench/fuzz_loaders.py is the long run), each loader given
a FIFO, a directory and /dev/zero in place of each of its files (in a child process),
and one test per problem the fuzzing found. tests/test_hostile_inputs.py has the
bombs, the huge files and the slow downloads."""

import gzip
import io
import json
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not installed
import gpubp  # noqa: E402
from bench import fuzz_loaders  # noqa: E402
from bench.fuzz_loaders import MUTATIONS, TARGETS, run_case  # noqa: E402
from gpubp import checkpoint  # noqa: E402
from gpubp.datasets import load_file, mnist, read_idx, write_idx  # noqa: E402
from gpubp.errors import DataError, GpubpError, ModelFileError  # noqa: E402

EXAMPLES = 200  # per loader, a fixed sequence (derandomize): about half a second each
SEEDS = {name: target.seeds() for name, target in TARGETS.items()}


@pytest.mark.parametrize("name", list(TARGETS))
def test_mutated_files_load_or_raise_a_gpubp_value_error(name, tmp_path):
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    target = TARGETS[name]
    ops = st.lists(st.tuples(st.integers(0, MUTATIONS - 1), st.integers(0, 2**32 - 1),
                             st.integers(0, 2**32 - 1)), min_size=1, max_size=4)

    @settings(derandomize=True, database=None, max_examples=EXAMPLES, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(ops=ops, which=st.integers(0, 100), variant=st.integers(0, target.variants - 1))
    def case(ops, which, variant):
        seeds = SEEDS[name]
        result = run_case(target, seeds[which % len(seeds)], ops, variant, tmp_path)
        assert result["outcome"] != "finding", (result["error"], result["where"])

    case()


@pytest.fixture(scope="module")
def non_regular_results(tmp_path_factory):
    """run_special_cases for every loader, once: {(loader, kind): [results]}."""
    results = {}
    for result in fuzz_loaders.run_special_cases(list(TARGETS), tmp_path_factory.mktemp("special"),
                                                 seeds=SEEDS):
        results.setdefault((result["target"], result["kind"]), []).append(result)
    return results


@pytest.mark.parametrize("kind", fuzz_loaders.SPECIAL_KINDS)
@pytest.mark.parametrize("name", list(TARGETS))
def test_each_loader_refuses_non_regular_files(non_regular_results, name, kind):
    """A FIFO with no writer (a blocking open hangs), a directory and /dev/zero (read
    whole, it never ends) in place of each of a loader's files: a gpubp ValueError naming
    the file, in a child process under a 1 GiB address space and a 5 s limit a case."""
    results = non_regular_results[name, kind]
    assert results
    for result in results:
        assert result["outcome"] == "rejected", (result["file"], result["error"], result["where"])
        assert f"{result['paths'][result['file']]}: is a" in result["error"]


@pytest.mark.parametrize("variant", range(TARGETS["npz"].variants))
def test_npz_seeds_load_under_every_zip_method(tmp_path, monkeypatch, variant):
    """The fuzzing's .npz cases cover stored, deflate, bzip2 and lzma members: each
    seed, unmutated, loads under each."""
    monkeypatch.setattr(fuzz_loaders, "mutate", lambda data, ops: data)
    for seed in SEEDS["npz"]:
        result = run_case(TARGETS["npz"], seed, [(0, 0, 0)], variant, tmp_path)
        assert result["outcome"] == "loaded", result["error"]


def test_mutations_splice_huge_integers():
    """Digit runs become 400-digit integers (and 5,000-digit ones), and JSON fields
    10^400, so JSON headers and states meet numbers beyond any size field."""
    text = b'{"shape": [3, 4]}'
    spliced = {fuzz_loaders.mutate(text, [(8, a, c)]) for a in range(2)
               for c in range(len(fuzz_loaders.DIGIT_RUNS))}
    assert b'{"shape": [' + b"9" * 400 + b", 4]}" in spliced
    assert b'{"shape": [3, -' + b"9" * 400 + b"]}" in spliced
    state = {"a": [1, 2]}
    for c in range(len(fuzz_loaders.ODD_VALUES)):
        fuzz_loaders._edit_json(state, [(0, 0, c * 3)])
    assert 10**400 in fuzz_loaders.ODD_VALUES and -10**400 in fuzz_loaders.ODD_VALUES


def test_the_fuzz_harness_flags_what_it_should(tmp_path, monkeypatch):
    """run_case calls an exception other than a gpubp ValueError a finding, and an
    allocation beyond the bound too."""
    target = TARGETS["csv"]
    monkeypatch.setattr(target, "load", lambda paths: {}["missing"])
    result = run_case(target, SEEDS["csv"][0], [(0, 0, 0)], 0, tmp_path)
    assert result["outcome"] == "finding" and result["error"].startswith("KeyError")
    monkeypatch.setattr(target, "load", lambda paths: np.ones(64 << 20, np.uint8))
    result = run_case(target, SEEDS["csv"][0], [(0, 0, 0)], 0, tmp_path)
    assert result["outcome"] == "finding" and result["error"].startswith("MemoryBound")
    monkeypatch.setattr(target, "load", lambda paths: (_ for _ in ()).throw(DataError("x")))
    assert run_case(target, SEEDS["csv"][0], [(0, 0, 0)], 0, tmp_path)["outcome"] == "rejected"


# ---- memory: a header's claim allocates nothing --------------------------------------

def peak_while(fn):
    """(exception raised, tracemalloc peak in bytes) of fn()."""
    tracemalloc.start()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - returned for the caller to check
        return e, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    raise AssertionError("expected an error")


def npz_with_member(name: str, npy: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(name, npy)
        z.writestr("y.npy", fuzz_loaders._npy_bytes(np.zeros(3)))
    return out.getvalue()


def test_npz_header_claiming_10_to_the_12_elements_allocates_nothing(tmp_path):
    npy = bytearray(fuzz_loaders._npy_bytes(np.zeros((3, 2), np.float64)))
    header = bytes(npy[:128]).replace(b"(3, 2)", b"(1000000000000, 2)")
    path = tmp_path / "huge.npz"
    path.write_bytes(npz_with_member("X.npy", header + bytes(npy[128:])))
    error, peak = peak_while(lambda: load_file(path))
    assert isinstance(error, DataError) and "truncated" in str(error)
    assert peak < 16 * path.stat().st_size + (4 << 20)


def test_raw_idx_header_claiming_10_to_the_12_images_allocates_nothing(tmp_path):
    path = tmp_path / "huge.idx"
    path.write_bytes(b"\0\0\x08\x03" + np.array([4 * 10**9, 28, 28], ">u4").tobytes()
                     + bytes(1000))
    error, peak = peak_while(lambda: read_idx(path))
    assert isinstance(error, DataError) and "truncated" in str(error)
    assert peak < 16 * path.stat().st_size + (4 << 20)


def test_checkpoint_tensor_claiming_a_huge_shape_allocates_nothing(tmp_path):
    """A re-sealed checkpoint (valid checksum) whose header claims a 10^6 × 10^6 tensor."""
    seed = SEEDS["checkpoint"][0]
    body = seed[checkpoint.HEAD:]
    n = int.from_bytes(body[:8], "little")
    header = json.loads(body[8:8 + n])
    header["param.0"]["shape"] = [10**6, 10**6]
    text = json.dumps(header).encode()
    path = tmp_path / checkpoint.checkpoint_path(tmp_path, 1).name
    path.write_bytes(fuzz_loaders._seal(len(text).to_bytes(8, "little") + text + body[8 + n:]))
    error, peak = peak_while(lambda: checkpoint.read_checkpoint(path))
    assert isinstance(error, GpubpError) and isinstance(error, ValueError)
    assert peak < 16 * path.stat().st_size + (4 << 20)


# ---- what the fuzzing found, one test each -------------------------------------------

def test_csv_that_is_not_utf8_is_a_data_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"x,label\n1,\xff\xfe\n2,a\n")
    with pytest.raises(DataError, match="not a readable UTF-8 CSV"):
        load_file(path)


def test_csv_field_beyond_the_csv_module_limit_is_a_data_error(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text('x,label\n"' + "1" * 200_000 + '",a\n')
    with pytest.raises(DataError, match="not a readable UTF-8 CSV"):
        load_file(path)


def test_csv_too_small_to_split_is_a_data_error(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("x,label\n1,a\n")
    with pytest.raises(DataError, match="too few rows to split"):
        load_file(path)


def test_csv_long_label_costs_its_own_length_not_times_the_rows(tmp_path):
    """NumPy strings are fixed-width: one 20,000-character label among 2,000 rows made a
    2,000 × 20,000 × 4-byte array. Labels stay Python strings now."""
    rows = ["x,label"] + [f"{i},{'ab'[i % 2]}" for i in range(2000)] + ["0," + "c" * 20000]
    path = tmp_path / "long.csv"
    path.write_text("\n".join(rows) + "\n")
    tracemalloc.start()
    try:
        data = load_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data.classes) == 3 and data.n_features == 1
    assert peak < 200 * path.stat().st_size  # was about 4,000 × the file


def test_csv_values_beyond_float32_are_a_data_error(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("x,label\n" + "\n".join(f"{v},{i % 2}" for i, v in
                                             enumerate([1e39, 1, 2, 3, 4, 5, 6, 7])))
    with pytest.raises(DataError, match="beyond the range of float32"):
        load_file(path)


def test_csv_with_only_a_label_column_is_a_data_error(tmp_path):
    path = tmp_path / "none.csv"
    path.write_text("label\n" + "\n".join("ab"[i % 2] for i in range(10)))
    with pytest.raises(DataError, match="features ≥ 1"):
        load_file(path)


@pytest.mark.parametrize("found,replaced", [
    (b"'descr'", b"('descr'"),  # a header NumPy cannot tokenize
    (b"(3,)", b"(99999999999999999999,)"),  # a shape beyond a C long
], ids=["untokenizable-header", "shape-beyond-c-long"])
def test_npz_header_numpy_cannot_parse_is_a_data_error(tmp_path, found, replaced):
    npy = fuzz_loaders._npy_bytes(np.zeros(3))
    path = tmp_path / "header.npz"
    path.write_bytes(npz_with_member("X.npy", npy.replace(found, replaced)))
    with pytest.raises(DataError, match="not a readable .npz"):
        load_file(path)


def test_npz_member_with_an_unsupported_compression_method_is_a_data_error(tmp_path):
    data = bytearray(npz_with_member("X.npy", fuzz_loaders._npy_bytes(np.zeros((3, 1)))))
    data[8:10] = (99).to_bytes(2, "little")  # the first local header's method: unknown
    central = data.rfind(b"PK\x01\x02")
    data[central + 10:central + 12] = (99).to_bytes(2, "little")
    path = tmp_path / "method.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="not a readable .npz"):
        load_file(path)



def test_mnist_pair_of_wrong_dtype_or_empty_is_a_data_error():
    images = np.zeros((0, 28, 28), np.uint8)
    with pytest.raises(DataError, match="do not pair"):
        mnist._images_and_labels(images, np.zeros(0, np.uint8))
    with pytest.raises(DataError, match="unsigned bytes"):
        mnist._images_and_labels(np.zeros((2, 28, 28), np.float32), np.zeros(2, np.int8))


def test_model_with_a_tensor_numpy_has_no_dtype_for_is_a_model_file_error(tmp_path):
    header = json.dumps({"W1": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}})
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + bytes(4))
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        gpubp.MLP.load(path, backend="numpy")


def test_model_metadata_nested_too_deep_is_a_model_file_error(tmp_path):
    from safetensors.numpy import save

    metadata = {"format": "gpubp.mlp", "version": "1", "dtype": "float32",
                "layer_sizes": "[" * 100_000}
    path = tmp_path / "deep.safetensors"
    path.write_bytes(save({"W1": np.zeros((2, 3), np.float32)}, metadata=metadata))
    with pytest.raises(ModelFileError, match="bad model metadata"):
        gpubp.MLP.load(path, backend="numpy")


def test_gzip_idx_with_a_corrupt_stream_is_a_data_error(tmp_path):
    data = bytearray(gzip.compress(write_idx(np.arange(200, dtype=np.uint8)), mtime=0))
    data[12] ^= 0xFF
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError):
        read_idx(path)


@pytest.mark.parametrize("name", ["param." + "1" * 5000, "param.\u00b2", "param.-1", "W1"])
def test_checkpoint_with_an_odd_tensor_name_is_a_checkpoint_error(tmp_path, name):
    """Found by bench/fuzz_loaders.py: a 5,000-digit index made int() raise a plain
    ValueError (Python's limit on digits); a superscript digit passed str.isdigit()."""
    from safetensors.numpy import save

    from gpubp.errors import CheckpointError
    from gpubp.fileio import read_safetensors

    seed = SEEDS["checkpoint"][0]
    metadata, tensors = read_safetensors(seed[checkpoint.HEAD:])
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    tensors[name] = tensors.pop("param.0")
    path = tmp_path / "odd.ckpt"
    path.write_bytes(fuzz_loaders._seal(save(tensors, metadata=metadata)))
    with pytest.raises(CheckpointError, match="unexpected tensor"):
        TARGETS["checkpoint"].load({"c.ckpt": path})

