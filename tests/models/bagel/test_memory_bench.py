"""`recipes/benchmarks/bench_memory.py`: its case syntax, and one tiny case run end to end on the CPU."""

from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "recipes" / "benchmarks"))
    import bench_memory

    return bench_memory


def test_cases_parse_and_bad_ones_are_named(bench):
    assert bench.parse_case("4-bit:32:1024") == ("4-bit", 32, 1024)
    assert bench.parse_case("bf16:full:512") == ("bf16", None, 512)
    with pytest.raises(ValueError, match="'8-bit:full:512'.*frozen"):
        bench.parse_case("8-bit:full:512")
    with pytest.raises(ValueError, match="'fp8:32:512'"):
        bench.parse_case("fp8:32:512")


def test_a_tiny_case_trains_from_a_written_checkpoint(bench, tmp_path):
    bench.write_checkpoint(tmp_path / "model", tiny=True, device="cpu")
    result = bench.run_case("bf16:4:32", tmp_path / "model", steps=2, tiny=True, device="cpu")
    assert result["case"] == "bf16:4:32" and result["peak_allocated_gb"] is None  # no CUDA: nothing measured
    assert result["loss"] is not None and result["loss"] > 0
    assert result["estimate_gb"] > 0
