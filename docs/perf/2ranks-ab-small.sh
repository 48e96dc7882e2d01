# The small-collective paths (ringcomm/small.py, ringcomm/single.py) A/B on this 2-core machine:
# BASE is a checkout of 8a7e252 (before them), e.g. mkdir $BASE; git archive 8a7e252 | tar -x -C $BASE
cd "$(git rev-parse --show-toplevel)"
for rep in 1 2; do for tree in base new; do
  root=$PWD; [ $tree = base ] && root=$BASE
  echo "== tree=$tree rep=$rep $(uptime)"
  (cd $root && PYTHONPATH=$root timeout 600 python -m ringcomm.bench -n 2 --vs mlx -b 8 -e 64M -f 4 --op all_sum,all_gather 2>&1 | grep -v '^#  \|pass on\|^\[0\]')
  (cd $root && PYTHONPATH=$root timeout 60 python -m ringcomm.launch -n 2 $OLDPWD/docs/perf/16core/latency.py 2>&1 | tail -1)
done; done
