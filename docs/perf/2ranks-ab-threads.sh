# BASE: a checkout of 142ac6a (before the threaded data path), e.g. mkdir $BASE; git archive 142ac6a | tar -x -C $BASE
cd "$(git rev-parse --show-toplevel)"
for rep in 1 2; do for tree in base new; do
  root=$PWD; [ $tree = base ] && root=$BASE
  echo "== tree=$tree rep=$rep $(uptime)"
  (cd $root && PYTHONPATH=$root timeout 600 python -m ringcomm.bench -n 2 --vs mlx -b 8 -e 64M -f 4 --op all_sum,all_gather 2>&1 | grep -v '^#  \|pass on\|^\[0\]')
done; done
