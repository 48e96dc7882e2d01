# Run on the device machine from the repository root, with MLX's wheels in .whl/ (see
# DEVELOPERS.md); results go to $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
nproc; python3 --version
B="python3 -m ringcomm.bench"
run() { echo "== $*"; timeout 150 "$@" 2>&1 | grep -v '^#  ' ; }
for n in 2 4 8; do for k in 1 2; do for t in 1 auto; do
  [ $n = 8 ] && [ $k = 2 ] && continue
  RINGCOMM_THREADS=$t run $B -n $n --connections-per-ip $k -b 256K -e 64M -f 4 --op all_sum,all_gather
done; done; done
RINGCOMM_THREADS=auto run $B -n 2 --connections-per-ip 4 -b 256K -e 64M -f 4 --op all_sum,all_gather
RINGCOMM_THREADS=auto run $B -n 2 -b 256K -e 64M -f 4 --op all_sum,all_gather --vs mlx
RINGCOMM_THREADS=auto run $B -n 4 -b 256K -e 64M -f 4 --op all_sum,all_gather --vs mlx,gloo
