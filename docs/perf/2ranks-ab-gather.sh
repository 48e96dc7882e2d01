# The all_gather own-block change (sends read the input; the copy runs while the bytes move)
# A/B on this 2-core machine: BASE is a checkout of 2c3bacd (before it), e.g.
# mkdir $BASE; git archive 2c3bacd | tar -x -C $BASE
cd "$(git rev-parse --show-toplevel)"
for rep in 1 2; do for tree in base new; do
  root=$PWD; [ $tree = base ] && root=$BASE
  echo "== tree=$tree rep=$rep $(uptime)"
  (cd $root && PYTHONPATH=$root timeout 600 python -m ringcomm.bench -n 2 --vs mlx -b 8 -e 64M -f 4 --op all_sum,all_gather 2>&1 | grep -v '^#  \|pass on\|^\[0\]')
done; done
