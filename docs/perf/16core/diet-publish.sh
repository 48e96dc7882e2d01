# Issue 17's latency round (a leaner Python path) and lanes on single.run, on the device
# machine, from the repository root, with MLX's wheels in .whl/ and iproute2 in .iproute/
# (DEVELOPERS.md):
#   BASE=<tree before> [PREV=<another tree>] [VAR=<a variant>] bash docs/perf/16core/diet-publish.sh
# 1. latency.py and python_path.py per tree (base, prev, new = this tree, var), three
#    alternating rounds; 2. the A/B of large sizes (base, prev and new, 2 and 4 ranks, 3
#    alternating rounds), allgather_timeline.py and mixed_loop.py per tree; 3. this tree's
#    tables (tables.sh) and K=2; 4. the links run, when time is left.  Everything goes to
#    /tmp/res, packed into $OUT/all.tgz after each phase (the device returns at most 8 files).
# Run of 2026-12-07: diet-notes.txt (BASE f0c6cb5, PREV e8fca91, new 0c544aa).
. docs/perf/16core/ab-setup.sh
ab_trees="base${PREV:+ prev} new"
{
  date -u; nproc; lscpu | grep "Model name"; uptime
  for rep in 1 2 3; do for tree in $trees; do
    latency $tree $rep
    if [ $rep = 1 ]; then python_path $tree; fi
  done; done
  echo "== latency with a cProfile, tree=new"
  PYTHONPATH=/tmp/site:$here timeout 30 python3 -m ringcomm.launch -n 2 docs/perf/16core/latency.py profile 2>&1 | tail -30
  for rep in 1 2 3; do for tree in $ab_trees; do
    for n in 2 4; do bench_ab $tree $rep $n; done
  done; done
  for tree in $ab_trees; do
    for script in allgather_timeline.py mixed_loop.py; do
      in_tree $tree "$script tree=$tree" python3 -m ringcomm.launch -n 2 "$here/docs/perf/16core/$script"
    done
  done
  uptime
} > $R/ab.txt 2>&1
pack
export PYTHONPATH=/tmp/site:$here
OUT=$R bash docs/perf/16core/tables.sh diet $R/ab.txt
{
  echo "python3 -m ringcomm.bench -n 2 --connections-per-ip 2 --vs mlx -b 1M -e 64M -f 4 --op all_sum,all_gather"
  timeout 120 python3 -m ringcomm.bench -n 2 --connections-per-ip 2 --vs mlx -b 1M -e 64M -f 4 --op all_sum,all_gather 2>&1 | grep -v "pass on\|^\[0\]"
} > $R/k2-2ranks.txt 2>&1
pack
echo "elapsed $SECONDS s before links" >> $R/ab.txt
if [ $SECONDS -lt 380 ]; then  # (the call's limit is 600 s)
  mkdir -p $R/links
  OUT=$R/links MAXBYTES=64M RATES=none,10,25,50 timeout 200 bash docs/perf/links/device-links.sh > /dev/null 2>&1
  echo "links rc=$?" >> $R/ab.txt
fi
uptime >> $R/ab.txt
pack
