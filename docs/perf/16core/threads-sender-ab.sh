# Run on the device machine from the repository root, with MLX's wheels in .whl/ (see
# DEVELOPERS.md).  "base" is .perf/base, a `git archive 97118fc` (lanes alone); "new" was the
# working tree with a sender thread per lane on top of it, measured and then dropped (never
# committed; docs/performance.md describes it).
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1
B="python3 -m ringcomm.bench"
for rep in 1 2; do
for n in 2 4 8; do for tree in base new; do
  root=$PWD; [ $tree = base ] && root=$PWD/.perf/base
  echo "== tree=$tree n=$n rep=$rep"
  (cd $root && PYTHONPATH=/tmp/site:$root timeout 150 $B -n $n -b 1M -e 64M -f 4 --op all_sum,all_gather 2>&1 | grep -v '^#  ')
done; done; done
echo "== new n=2 K=2"; PYTHONPATH=/tmp/site:$PWD timeout 150 $B -n 2 --connections-per-ip 2 -b 1M -e 64M -f 4 --op all_sum,all_gather -c 2>&1 | grep -v '^#  '
echo "== new n=2 threads=1"; RINGCOMM_THREADS=1 PYTHONPATH=/tmp/site:$PWD timeout 150 $B -n 2 -b 1M -e 64M -f 4 --op all_sum,all_gather 2>&1 | grep -v '^#  '
