"""The benchmark command end to end, on real local ranks: records, table, files, checks, errors."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from ringcomm.launch import localhost_hostfile
from ringcomm.transports.hostfile import write_hostfile
from tests.procs import ROOT, env

KEYS = ["impl", "op", "ranks", "bytes", "dtype", "time_us", "algbw_gbps", "busbw_gbps", "wrong",
        "in_place", "time_min_us", "time_max_us"]
OPS = ["all_sum", "all_gather", "sum_scatter", "sendrecv"]
SWEEP = ["-n", "2", "-b", "8", "-e", "64K", "-f", "16", "--op", ",".join(OPS),
         "--iters", "3", "-w", "1"]
SIZES = [8, 128, 2048, 32768]
FACTOR = {"all_sum": 1.0, "all_max": 1.0, "all_min": 1.0, "all_gather": 0.5,
          "sum_scatter": 0.5, "sendrecv": 1.0}  # 2 ranks

needs_mlx = pytest.mark.skipif(importlib.util.find_spec("mlx") is None,
                               reason="mlx is not importable (pip install 'ringcomm[mlx]')")
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch is not importable: --vs gloo times torch.distributed's gloo, and torch is no "
           "dependency of ringcomm (pip install torch, a CPU build is enough)")


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
        assert 0 < row["time_min_us"] <= row["time_us"] <= row["time_max_us"], row
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
    assert "#wrong" in result.stdout
    assert not [name for name in column_names(result.stdout) if "ratio" in name]
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
    assert scatter[-6:] == ["-"] * 6  # MLX's time, min, max, busbw, #wrong and ratio


def table_rows(stdout: str, op: str) -> list[list[str]]:
    """The cells of ``op``'s rows in the table."""
    return [line.split() for line in stdout.splitlines()
            if not line.startswith("#") and line.split()[3:4] == [op]]


def column_names(stdout: str) -> list[str]:
    """The column names of the table's first block, as printed (names hold one space)."""
    line = next(line for line in stdout.splitlines() if "size(B)" in line)
    return [name.strip() for name in line.lstrip("#").split("  ") if name.strip()]


@needs_torch
def test_vs_gloo_results_are_right_and_the_table_has_its_columns(tmp_path):
    out = tmp_path / "r.jsonl"
    ops = [*OPS, "all_max", "all_min"]
    sweep = [*SWEEP[:SWEEP.index("--op") + 1], ",".join(ops), *SWEEP[SWEEP.index("--op") + 2:]]
    result = bench(*sweep, "-c", "--vs", "gloo", "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = records(out)
    assert_sweep(rows, "ringcomm", ops)
    assert_sweep(rows, "gloo", ops)  # every gloo result checked against numpy: 0 wrong
    assert {(r["op"], r["in_place"]) for r in rows if r["impl"] == "gloo"} == {
        (op, op in ("all_sum", "all_max", "all_min")) for op in ops}  # gloo's all_reduce is
    assert "vs torch " in result.stdout and " gloo: ratio = ringcomm busbw / gloo busbw" in (
        result.stdout)
    names = column_names(result.stdout)
    assert names[10:] == ["gloo time(us)", "gloo min(us)", "gloo max(us)", "gloo busbw(GB/s)",
                          "gloo #wrong", "ratio"]
    assert "mlx" not in result.stdout
    for op in ops:
        cells = table_rows(result.stdout, op)
        assert [int(c[0]) for c in cells] == SIZES
        assert all(c[-2] == "0" for c in cells), cells  # the gloo #wrong column
        for c in cells:
            ours, theirs = (next(r for r in rows if r["impl"] == impl and r["op"] == op
                                 and r["bytes"] == int(c[0])) for impl in ("ringcomm", "gloo"))
            assert float(c[10]) == pytest.approx(theirs["time_us"], abs=0.06)
            assert float(c[11]) == pytest.approx(theirs["time_min_us"], abs=0.06)
            assert float(c[12]) == pytest.approx(theirs["time_max_us"], abs=0.06)
            assert float(c[-1]) == pytest.approx(ours["busbw_gbps"] / theirs["busbw_gbps"],
                                                 rel=0.01, abs=0.01)
    assert "# sum_scatter (gloo's reduce_scatter is a whole all_reduce" in result.stdout


@needs_torch
def test_vs_gloo_check_counts_its_wrong_elements_and_marks_what_gloo_lacks(tmp_path):
    out = tmp_path / "r.jsonl"
    result = bench("-n", "2", "-b", "64", "-e", "64", "--op", "all_sum,sendrecv", "--iters", "2",
                   "-w", "1", "-c", "--dtype", "int16", "--vs", "gloo", "--output", str(out),
                   RINGCOMM_BENCH_CORRUPT_RANK="1")
    assert result.returncode == 0, result.stderr
    rows = [(r["impl"], r["op"], r["wrong"]) for r in records(out)]
    # gloo's all_reduce has no int16 (torch: "Invalid scalar type"); its send/recv has, and
    # rank 1's corrupted element is counted on rank 0 through gloo's own all_reduce
    assert sorted(rows) == [("gloo", "sendrecv", 1), ("ringcomm", "all_sum", 1),
                            ("ringcomm", "sendrecv", 1)]
    assert "# all_sum (gloo has no int16 collectives: '-')" in result.stdout
    assert table_rows(result.stdout, "all_sum")[0][-6:] == ["-"] * 6
    assert table_rows(result.stdout, "sendrecv")[0][-2] == "1"


@needs_mlx
@needs_torch
def test_vs_mlx_and_gloo_shows_both_peers(tmp_path):
    out = tmp_path / "r.jsonl"
    result = bench("-n", "2", "-b", "2K", "-e", "2K", "--op", "all_sum,sum_scatter", "--iters",
                   "2", "-w", "1", "-c", "--vs", "gloo,mlx", "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = {(r["impl"], r["op"]): r for r in records(out)}
    assert sorted(rows) == [("gloo", "all_sum"), ("gloo", "sum_scatter"), ("mlx", "all_sum"),
                            ("ringcomm", "all_sum"), ("ringcomm", "sum_scatter")]
    assert all(r["wrong"] == 0 for r in rows.values())
    assert column_names(result.stdout)[10:] == [
        "mlx time(us)", "mlx min(us)", "mlx max(us)", "mlx busbw(GB/s)", "mlx #wrong",
        "mlx ratio", "gloo time(us)", "gloo min(us)", "gloo max(us)", "gloo busbw(GB/s)",
        "gloo #wrong", "gloo ratio"]
    ours = rows["ringcomm", "all_sum"]["busbw_gbps"]
    cells = table_rows(result.stdout, "all_sum")[0]
    assert float(cells[15]) == pytest.approx(ours / rows["mlx", "all_sum"]["busbw_gbps"],
                                             rel=0.01, abs=0.01)
    assert float(cells[21]) == pytest.approx(ours / rows["gloo", "all_sum"]["busbw_gbps"],
                                             rel=0.01, abs=0.01)
    scatter = table_rows(result.stdout, "sum_scatter")[0]
    assert scatter[10:16] == ["-"] * 6 and scatter[20] == "0"  # MLX has none
    assert "MLX's ring has no reduce-scatter: '-'; gloo's reduce_scatter" in result.stdout


@needs_torch
def test_gloo_rendezvous_has_a_deadline_and_names_the_rank(tmp_path):
    config = '{"ops": ["all_sum"], "sizes": [8], "impls": ["gloo"]}'
    procs = {}
    start = time.monotonic()
    for rank in (0, 1):  # each alone in its own 2-rank ring: 0 waits, 1 finds no rank 0
        hostfile = tmp_path / f"hostfile{rank}.json"
        write_hostfile(hostfile, localhost_hostfile(2, 1))
        procs[rank] = subprocess.Popen(
            [sys.executable, "-m", "ringcomm.bench.rank", config], cwd=ROOT,
            env=env(MLX_RANK=str(rank), MLX_HOSTFILE=str(hostfile), RINGCOMM_TIMEOUT="2"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for rank, proc in procs.items():
            _, err = proc.communicate(timeout=150)
            assert proc.returncode == 1, err
            master = (tmp_path / f"hostfile{rank}.json").read_text().split('"')[1]
            line = next(line for line in err.splitlines() if line.startswith("ringcomm-bench:"))
            assert line.startswith(f"ringcomm-bench: CommTimeoutError: rank {rank}: gloo "
                                   f"rendezvous at tcp://{master}: gloo: "), line
            assert line.endswith(f"[peer rank 0 ({master})]") == (rank == 1), line
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # a 2 s deadline plus importing torch twice on a busy 2-core machine (gloo's own default
    # would be 30 minutes)
    assert time.monotonic() - start < 100


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
    assert rows == [["[0]", "64", "16", "float32", "all_min", *rows[0][5:10], "0"]]
    median, fastest, slowest = map(float, rows[0][5:8])
    assert fastest <= median <= slowest


@pytest.mark.parametrize("args, message", [
    (["-n", "2", "--op", "all_sum,all_reduce"], "unknown op 'all_reduce'"),
    (["-n", "2", "-b", "64K", "-e", "8"], "-b/--minbytes (65536 bytes) is larger than"),
    (["-n", "2", "-b", "8 bytes"], "is not a size such as 8, 64K"),
    (["-n", "2", "--output", "r.txt"], "must end in .json or .jsonl"),
    (["--op", "all_sum"], "give -n N to start N local ranks, or run under ringcomm-launch"),
    (["-n", "2", "--vs", "nccl"], "--vs: unknown peer 'nccl'; choose from mlx, gloo"),
    (["-n", "2", "--vs", "gloo,gloo"], "--vs names a peer twice: gloo,gloo"),
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
