"""The benchmark command end to end, on real local ranks: records, table, files, checks, errors."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.procs import ROOT, env

KEYS = ["impl", "op", "ranks", "bytes", "dtype", "time_us", "algbw_gbps", "busbw_gbps", "wrong"]
OPS = ["all_sum", "all_gather", "sum_scatter", "sendrecv"]
SWEEP = ["-n", "2", "-b", "8", "-e", "64K", "-f", "16", "--op", ",".join(OPS),
         "--iters", "3", "-w", "1"]
SIZES = [8, 128, 2048, 32768]
FACTOR = {"all_sum": 1.0, "all_max": 1.0, "all_gather": 0.5, "sum_scatter": 0.5,
          "sendrecv": 1.0}  # 2 ranks

needs_mlx = pytest.mark.skipif(importlib.util.find_spec("mlx") is None,
                               reason="mlx is not importable (pip install 'ringcomm[mlx]')")


def bench(*args: str, module: str = "ringcomm.bench", **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env=env(**extra_env), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_sweep(rows: list[dict], impl: str, ops: list[str], wrong: int | None = 0) -> None:
    mine = [r for r in rows if r["impl"] == impl]
    for row in mine:
        assert list(row) == KEYS
        assert row["ranks"] == 2 and row["dtype"] == "float32"
        assert row["wrong"] == wrong, row
        assert row["time_us"] > 0
        assert row["algbw_gbps"] == pytest.approx(row["bytes"] / row["time_us"] / 1e3)
        assert row["busbw_gbps"] == pytest.approx(row["algbw_gbps"] * FACTOR[row["op"]])
    assert sorted((r["op"], r["bytes"]) for r in mine) == sorted(
        (op, size) for op in ops for size in SIZES)


def test_json_lines_and_table(tmp_path):
    out = tmp_path / "r.jsonl"
    result = bench(*SWEEP, "-c", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert_sweep(records(out), "ringcomm", OPS)
    for op in OPS:
        assert f"# {op}\n" in result.stdout
    assert "#wrong" in result.stdout and "ratio" not in result.stdout
    assert "[0]" not in result.stdout, "rank output leaked into the table"


def test_check_catches_one_wrong_element_on_another_rank(tmp_path):
    out = tmp_path / "r.json"
    ops = ["all_sum", "all_gather", "sum_scatter", "sendrecv"]
    result = bench(*SWEEP, "-c", "--output", str(out), RINGCOMM_BENCH_CORRUPT_RANK="1")
    assert result.returncode == 0, result.stderr
    assert_sweep(records(out), "ringcomm", ops, wrong=1)  # rank 1's, counted on rank 0
    unchecked = tmp_path / "u.json"
    assert bench(*SWEEP, "--output", str(unchecked), RINGCOMM_BENCH_CORRUPT_RANK="1").returncode == 0
    assert_sweep(records(unchecked), "ringcomm", ops, wrong=None)


def test_in_place_results_are_checked_right(tmp_path):
    out = tmp_path / "r.jsonl"
    ops = ["all_sum", "all_max", "all_gather", "sum_scatter"]
    sweep = [*SWEEP[:SWEEP.index("--op") + 1], ",".join(ops), *SWEEP[SWEEP.index("--op") + 2:]]
    result = bench(*sweep, "-c", "--in-place", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "ringcomm in place" in result.stdout
    assert_sweep(records(out), "ringcomm", ops)  # 0 wrong, though every call overwrote its input


@needs_mlx
def test_vs_mlx(tmp_path):
    out = tmp_path / "r.jsonl"
    result = bench(*SWEEP, "-c", "--vs", "mlx", "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = records(out)
    assert_sweep(rows, "ringcomm", OPS)
    assert_sweep(rows, "mlx", [op for op in OPS if op != "sum_scatter"])  # MLX has none
    header = next(line for line in result.stdout.splitlines() if "all_sum" not in line
                  and "size(B)" in line)
    assert header.split()[-1] == "ratio" and "mlx busbw(GB/s)" in header
    row = next(line.split() for line in result.stdout.splitlines()
               if line.split()[:1] == ["32768"] and "all_sum" in line)
    ours, theirs = (r for r in rows if r["op"] == "all_sum" and r["bytes"] == 32768)
    assert float(row[-1]) == pytest.approx(ours["busbw_gbps"] / theirs["busbw_gbps"], rel=0.01,
                                           abs=0.01)
    scatter = next(line.split() for line in result.stdout.splitlines() if "sum_scatter" in line
                   and not line.startswith("#"))
    assert scatter[-4:] == ["-", "-", "-", "-"]


def test_csv_output(tmp_path):
    out = tmp_path / "r.csv"
    result = bench("-n", "2", "-b", "8", "-e", "1K", "-f", "32", "--op", "all_max,sendrecv",
                   "--iters", "2", "-w", "0", "--output", str(out))
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == KEYS
    assert [(r["impl"], r["op"], int(r["bytes"]), r["wrong"]) for r in rows] == [
        ("ringcomm", op, size, "") for op in ("all_max", "sendrecv") for size in (8, 256)]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib is not importable (pip install 'ringcomm[bench]')")
def test_plot(tmp_path):
    png = tmp_path / "sweep.png"
    result = bench("-n", "2", "-b", "8", "-e", "4K", "-f", "8", "--op", "all_sum,all_gather",
                   "--iters", "2", "-w", "0", "--plot", str(png))
    assert result.returncode == 0, result.stderr
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_alias_under_the_launcher_prints_the_table_on_rank_0():
    result = subprocess.run(
        [sys.executable, "-m", "ringcomm.launch", "-n", "2", "--", sys.executable, "-m",
         "ringcomm.bench.sweep", "-b", "64", "-e", "64", "--op", "all_min", "--iters", "2", "-c"],
        env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if "#" not in line]
    assert rows == [["[0]", "64", "16", "float32", "all_min", rows[0][5], rows[0][6],
                     rows[0][7], "0"]]


@pytest.mark.parametrize("args, message", [
    (["-n", "2", "--op", "all_sum,all_reduce"], "unknown op 'all_reduce'"),
    (["-n", "2", "-b", "64K", "-e", "8"], "-b/--minbytes (65536 bytes) is larger than"),
    (["-n", "2", "-b", "8 bytes"], "is not a size such as 8, 64K"),
    (["-n", "2", "--output", "r.txt"], "must end in .json or .jsonl"),
    (["--op", "all_sum"], "give -n N to start N local ranks, or run under ringcomm-launch"),
])
def test_usage_errors_exit_2_and_say_what_to_fix(args, message):
    result = bench(*args)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert result.stdout == ""


def test_expected_results_match_a_direct_computation():
    from ringcomm.bench.checks import expected, rank_input
    n, count = 3, 12
    for dtype in map(np.dtype, ("int8", "float16", "complex64", "bool")):
        xs = np.stack([rank_input(r, count, dtype) for r in range(n)])
        assert len({x.tobytes() for x in xs}) == n, "inputs must differ between ranks"
        total = xs.any(0) if dtype.kind == "b" else xs.sum(0, dtype=dtype)
        for r in range(n):
            assert np.array_equal(expected("all_sum", r, n, count, dtype), total)
            assert np.array_equal(expected("sum_scatter", r, n, count, dtype),
                                  total[r * 4:(r + 1) * 4])
            assert np.array_equal(expected("all_gather", r, n, count, dtype), xs.reshape(-1))
            assert np.array_equal(expected("sendrecv", r, n, count, dtype), xs[(r - 1) % n])
        if dtype.kind != "c":
            assert np.array_equal(expected("all_max", 0, n, count, dtype), xs.max(0))
            assert np.array_equal(expected("all_min", 0, n, count, dtype), xs.min(0))
