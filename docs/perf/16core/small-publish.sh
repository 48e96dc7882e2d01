# Issue 17's tables after the small-collective paths (ringcomm/small.py, ringcomm/single.py), on
# the device machine, from the repository root, with MLX's wheels in .whl/ (DEVELOPERS.md).
# "base" is .perf/base, a `git archive 8a7e252` (the tree before them), for the latency A/B.
# Writes to $OUT: notes.txt (machine, latency A/B, all_gather probe), small-Nranks.{txt,jsonl}.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1
here=$PWD
{
  date -u; nproc; lscpu | grep "Model name"; uptime
  PYTHONPATH=/tmp/site:$here python3 -c "import sys, numpy, torch, mlx.core as mx; print(sys.version.split()[0], 'numpy', numpy.__version__, 'torch', torch.__version__, 'mlx', mx.__version__)"
  for rep in 1 2; do for tree in base new; do
    root=$here; [ $tree = base ] && root=$here/.perf/base
    echo "== latency, tree=$tree, rep=$rep: python3 -m ringcomm.launch -n 2 docs/perf/16core/latency.py; python3 docs/perf/16core/python_path.py"
    (cd $root && PYTHONPATH=/tmp/site:$root timeout 60 python3 -m ringcomm.launch -n 2 $here/docs/perf/16core/latency.py 2>&1 | tail -1)
    (cd $root && PYTHONPATH=/tmp/site:$root python3 $here/docs/perf/16core/python_path.py $root)
  done; done
  for T in 1 2; do
    echo "== all_gather probe, RINGCOMM_THREADS=$T: python3 -m ringcomm.launch -n 2 docs/perf/16core/allgather_probe.py"
    RINGCOMM_THREADS=$T PYTHONPATH=/tmp/site:$here timeout 60 python3 -m ringcomm.launch -n 2 docs/perf/16core/allgather_probe.py 2>&1 | grep "rank 0"
  done
} > $OUT/notes.txt 2>&1
export PYTHONPATH=/tmp/site:$here
bash docs/perf/16core/tables.sh small $OUT/notes.txt
uptime >> $OUT/notes.txt
grep -v "pass on\|done in" $OUT/notes.txt | tail -30
