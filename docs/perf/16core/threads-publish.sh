# Run on the device machine from the repository root, with MLX's wheels in .whl/ (see
# DEVELOPERS.md); results go to $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
mkdir -p $OUT/p
python3 -c "import torch, mlx.core as mx; print('torch', torch.__version__, 'mlx', mx.__version__)"
for n in 2 4 8; do
  timeout 280 python3 -m ringcomm.bench -n $n --vs mlx,gloo -b 8 -e 64M -f 4 --op all_sum,all_gather \
      --output $OUT/p/threads-${n}ranks.jsonl > $OUT/p/threads-${n}ranks.txt 2>>$OUT/p/err.txt
  echo "n=$n rc=$?"
done
timeout 200 python3 -m ringcomm.bench -n 2 --connections-per-ip 2 --vs mlx -b 1M -e 64M -f 4 --op all_sum,all_gather \
      > $OUT/p/threads-2ranks-k2.txt 2>>$OUT/p/err.txt
echo "k2 rc=$?"
cat $OUT/p/err.txt | grep -v "^\[0\]\|pass on" | head
