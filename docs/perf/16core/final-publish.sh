# Issue 17's last tables, on the device machine, from the repository root, with MLX's wheels
# in .whl/ and iproute2 in .iproute/ (DEVELOPERS.md; docs/perf/links/device-links.sh):
#   BASE=<checkout of the tree before> [VAR=<checkout of a variant>] bash docs/perf/16core/final-publish.sh
# A/B (base, new = this tree, and VAR when given: 2 alternating repetitions, 2 and 4 ranks, with
# latency.py and python_path.py per tree), memcpy_gap.py, then this tree's tables (and VAR's),
# K=2, and the links run.  Everything goes to /tmp/res, packed into $OUT/all.tgz after each
# phase (the device returns at most 8 files).  Runs of 2026-12-06: final-notes.txt (539ba6c,
# BASE f85e5e6) and memcopy-notes.txt (226ccf3, VAR = 226ccf3 with lanes.py's spare = False).
. docs/perf/16core/ab-setup.sh
{
  date -u; nproc; lscpu | grep "Model name"; uptime
  echo "== python3 docs/perf/memcpy_gap.py"; python3 docs/perf/memcpy_gap.py
  for rep in 1 2; do for tree in $trees; do
    for n in 2 4; do bench_ab $tree $rep $n; done
    latency $tree $rep
    python_path $tree
  done; done
  uptime
} > $R/ab.txt 2>&1
pack
export PYTHONPATH=/tmp/site:$here
OUT=$R bash docs/perf/16core/tables.sh final $R/ab.txt
if [ -n "${VAR:-}" ]; then
  (cd "$VAR" && OUT=$R PYTHONPATH=/tmp/site:$VAR bash docs/perf/16core/tables.sh var $R/ab.txt)
fi
{
  echo "python3 -m ringcomm.bench -n 2 --connections-per-ip 2 --vs mlx -b 1M -e 64M -f 4 --op all_sum,all_gather"
  timeout 120 python3 -m ringcomm.bench -n 2 --connections-per-ip 2 --vs mlx -b 1M -e 64M -f 4 --op all_sum,all_gather 2>&1 | grep -v "pass on\|^\[0\]"
} > $R/k2-2ranks.txt 2>&1
pack
echo "elapsed $SECONDS s before links" >> $R/ab.txt
if [ $SECONDS -lt 400 ]; then  # (the call's limit is 600 s)
  mkdir -p $R/links
  OUT=$R/links MAXBYTES=64M RATES=none,10,25,50 timeout 300 bash docs/perf/links/device-links.sh > /dev/null 2>&1
  echo "links rc=$?" >> $R/ab.txt
fi
uptime >> $R/ab.txt
pack
