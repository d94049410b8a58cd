"""bench.report: docs/benchmarks.md's generated tables come from bench/results, only the
text between the markers changes, and a second run changes nothing."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not installed

from bench import report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

COMPARE = {
    "date": "2026-12-01T10:00:00+00:00", "source": "abc1234",
    "machine": {"cpu": "AMD EPYC", "cores": 2, "threads": 2, "python": "3.11.7"},
    "config": {"batch_sizes": [256], "widths": [], "repeats": 2, "rounds": 1, "warmup": 1,
               "threads": 2},
    "data": {"source": "synthetic (asked for)", "rows": 512},
    "peers": {"gpubp-numpy": {"device": "cpu", "reference": "gpubp-numpy", "status": "measured"},
              "sklearn": {"device": "cpu", "reference": "gpubp-numpy", "status": "skipped",
                          "reason": "scikit-learn is not installed"}},
    "results": [
        {"peer": "gpubp-numpy", "sweeps": ["batch"], "sizes": [784, 1024, 1024, 10],
         "hidden_width": 1024, "batch_size": 256, "status": "measured",
         "samples_per_s": 20000.0, "gpubp_over_peer": 1.0, "reference": "gpubp-numpy",
         "peak_rss_MiB": 100.0, "spread": 0.1},
        {"peer": "sklearn", "sweeps": ["batch"], "sizes": [784, 1024, 1024, 10],
         "hidden_width": 1024, "batch_size": 256, "status": "skipped",
         "reason": "scikit-learn is not installed"}],
}
UNKNOWN = {"benchmark": "sgemm on a new BLAS", "cpu": "AMD EPYC", "gflops": 123.5,
           "sizes": [[1024, 1024, 256]], "date": "2026-12-01T11:00:00"}
PROSE_TOP = "# Benchmarks\n\nHand-written prose, `<!-- generated: files -->` quoted inline.\n\n"
PROSE_MID = "\nMore prose | with a pipe, kept as written.\n\n"
PROSE_END = "\nThe end.\n"


def write_results(tmp_path) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    (results / "2026-12-01-cpu-compare.json").write_text(json.dumps(COMPARE))
    (results / "2026-12-01-amd-blas.json").write_text(json.dumps(UNKNOWN))
    (results / "2026-12-01-broken.json").write_text("{not json")
    return results


def doc_text(stale: str = "stale table\n") -> str:
    return (PROSE_TOP
            + f"<!-- generated: compare 2026-12-01-cpu-compare.json -->\n{stale}"
            + "<!-- /generated -->\n" + PROSE_MID
            + f"<!-- generated: files -->\n{stale}<!-- /generated -->\n" + PROSE_END
            + f"<!-- generated: unplaced -->\n{stale}<!-- /generated -->\n")


def outside_blocks(text: str) -> str:
    return report.BLOCK.sub(lambda m: m.group(1) + m.group(4), text)


def test_the_real_results_render_and_the_document_is_stable():
    found = report.load_results(REPO / "bench" / "results")
    assert found, "bench/results is empty"
    doc = (REPO / "docs" / "benchmarks.md").read_text()
    once, blocks = report.regenerate(doc, found)
    assert blocks >= 2
    assert outside_blocks(once) == outside_blocks(doc)  # the prose is the document's own
    assert report.regenerate(once, found)[0] == once
    for name in found:
        assert f"`{name}`" in once  # in the index, whatever its format
    measured = [r for r in found.values() if r.kind == "compare" and any(
        x.get("status") == "measured" for x in r.data["results"])]
    assert measured
    for r in measured:  # a table and the command, not the generic fallback
        text = report.render_file(r)
        assert "| peer |" in text and "`python -m bench.compare" in text


def test_only_the_marked_tables_change_and_a_second_run_changes_nothing(tmp_path, capsys):
    results = write_results(tmp_path)
    out = tmp_path / "benchmarks.md"
    out.write_text(doc_text())
    args = ["--results", str(results), "--out", str(out)]
    assert report.main(args + ["--check"]) == 1
    assert report.main(args) == 0
    first = out.read_text()
    assert "stale table" not in first
    assert first.startswith(PROSE_TOP) and PROSE_MID in first and PROSE_END in first
    assert outside_blocks(first) == outside_blocks(doc_text())
    # the compare table, its machine, date, source and command
    assert "| gpubp-numpy | 20,000 | 100 |" in first
    assert "AMD EPYC, 2 cores, 2 threads" in first and "2026-12-01 10:00 UTC" in first
    assert "measured source abc1234" in first
    assert 'python -m bench.compare --batch-sizes 256 --widths "" --repeats 2' in first
    assert "sklearn: skipped (scikit-learn is not installed)" in first
    # the unknown and the unreadable file: listed, shown by what can be read, no crash
    assert "| `2026-12-01-amd-blas.json` | unknown format" in first
    assert "| `gflops` | 123.5 |" in first and "- machine: AMD EPYC" in first
    assert "unreadable (JSONDecodeError" in first
    assert "### `2026-12-01-cpu-compare.json`" not in first  # it has its own block
    capsys.readouterr()
    assert report.main(args) == 0
    assert "unchanged" in capsys.readouterr().out
    assert out.read_text() == first
    assert report.main(args + ["--check"]) == 0


def test_an_unclosed_block_keeps_the_prose_after_it(tmp_path):
    results = write_results(tmp_path)
    text = ("<!-- generated: compare 2026-12-01-cpu-compare.json -->\nkeep me\n\n"
            "<!-- generated: files -->\nold\n<!-- /generated -->\n")
    new, blocks = report.regenerate(text, report.load_results(results))
    assert blocks == 1
    assert new.startswith("<!-- generated: compare 2026-12-01-cpu-compare.json -->\nkeep me\n")
    assert "old" not in new


def test_new_gpu_sections_and_wrong_kinds_fall_back_to_their_keys(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    check = {"date": "2026-12-02T09:00:00", "device": {"name": "NVIDIA H200"},
             "copy_bandwidth_GBps": 4000.0, "tests": {"error": "TimeoutExpired: 240 s"},
             "step_time": [{"batch": 64, "gpubp_s": 0.001, "torch_s": 0.002,
                            "gpubp_over_torch_speed": 2.0, "sizes": [784, 1024, 1024, 10]}],
             "graph_replay": {"launches_per_step": 23, "replay_ms": 0.21}}
    (results / "2026-12-02-h200-gpu-check.json").write_text(json.dumps(check))
    (results / "2026-12-02-h200-fuzz-x.json").write_text(json.dumps({"loaders": 1}))
    found = report.load_results(results)
    assert found["2026-12-02-h200-gpu-check.json"].kind == "gpu-check"
    text = report.render_file(found["2026-12-02-h200-gpu-check.json"])
    assert "4,000 GB/s" in text and "**tests**: failed: TimeoutExpired" in text
    assert "784-1024-1024-10" in text and "| 64 | 1.00 | 2.00 | 2.00× |" in text
    assert "**graph_replay**" in text and "| `launches_per_step` | 23 |" in text
    # a marker naming the wrong kind: the file's keys, not a traceback
    wrong = report.render_file(found["2026-12-02-h200-fuzz-x.json"], "fuzz")
    assert "Not readable as fuzz" in wrong and "| `loaders` | 1 |" in wrong
