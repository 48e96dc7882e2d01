# Issue 17's tables after the all_gather own-block change, on the device machine, from the
# repository root, with MLX's wheels in .whl/ (DEVELOPERS.md).  A/B: .perf/base2 is a
# `git archive 2c3bacd` (before the change), "new" this tree.
# Writes to $OUT: ab.txt (machine, A/B, latency, timeline), gather-Nranks.{txt,jsonl}.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1
here=$PWD
{
  date -u; nproc; lscpu | grep "Model name"; uptime
  for rep in 1 2; do for tree in base new; do
    root=$here; [ $tree = base ] && root=$here/.perf/base2
    for n in 2 4; do
      echo "== A/B tree=$tree rep=$rep: python3 -m ringcomm.bench -n $n -b 512K -e 32M -f 2 --op all_gather,all_sum"
      (cd $root && PYTHONPATH=/tmp/site:$root timeout 60 python3 -m ringcomm.bench -n $n -b 512K -e 32M -f 2 --op all_gather,all_sum 2>&1 | grep -v "^#  \|pass on\|^#$")
    done
  done; done
  for rep in 1 2 3; do
    echo "== latency rep=$rep: python3 -m ringcomm.launch -n 2 docs/perf/16core/latency.py"
    PYTHONPATH=/tmp/site:$here timeout 30 python3 -m ringcomm.launch -n 2 docs/perf/16core/latency.py 2>&1 | tail -1
  done
  echo "== python3 -m ringcomm.launch -n 2 docs/perf/16core/allgather_timeline.py"
  PYTHONPATH=/tmp/site:$here timeout 60 python3 -m ringcomm.launch -n 2 docs/perf/16core/allgather_timeline.py 2>&1
} > $OUT/ab.txt 2>&1
export PYTHONPATH=/tmp/site:$here
bash docs/perf/16core/tables.sh gather $OUT/ab.txt
uptime >> $OUT/ab.txt
