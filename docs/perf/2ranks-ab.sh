# A/B of two trees on this 2-core machine: ringcomm-bench --vs mlx on 2 ranks, the base tree
# and this one alternating, twice.  BASE is a checkout of the tree before the change, e.g.
#   mkdir $BASE; git archive COMMIT | tar -x -C $BASE; BASE=$BASE bash docs/perf/2ranks-ab.sh
# LATENCY=1 adds docs/perf/16core/latency.py (an 8-byte all_sum against a raw round trip).
cd "$(git rev-parse --show-toplevel)"
for rep in 1 2; do for tree in base new; do
  root=$PWD; [ $tree = base ] && root=$BASE
  echo "== tree=$tree rep=$rep $(uptime)"
  (cd $root && PYTHONPATH=$root timeout 600 python -m ringcomm.bench -n 2 --vs mlx -b 8 -e 64M -f 4 --op all_sum,all_gather 2>&1 | grep -v '^#  \|pass on\|^\[0\]')
  if [ "${LATENCY:-0}" = 1 ]; then
    (cd $root && PYTHONPATH=$root timeout 60 python -m ringcomm.launch -n 2 $OLDPWD/docs/perf/16core/latency.py 2>&1 | tail -1)
  fi
done; done
