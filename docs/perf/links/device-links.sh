#!/usr/bin/env bash
# The links benchmark on the 16-core device machine: 2 and 4 ranks over unshaped links (what the
# cores can feed) and tc tbf links of 10, 25
# and 50 Gbit/s (MTU 9000), ringcomm and MLX's ring on the same hostfile, 8 and 16 MiB.
# Run as root from the repository root, with Python 3.12, numpy and MLX importable
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
# and iproute2 unpacked under .iproute/ (bin/ip, sbin/tc and their libraries; the image has
# no ip or tc): the benchmark gives LD_LIBRARY_PATH to ip and tc only.
# Writes at most 4 files under $OUT: links-16core.txt (the table), links-16core.jsonl (a JSON
# line per row), links-16core.err (progress and rank messages), machine.txt.
set -uo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:?set OUT to the folder for the results}
RATES=${RATES:-none,10,25,50}
RANKS=${RANKS:-2,4}
MAXBYTES=${MAXBYTES:-16M}
PYTHON=${PYTHON:-python3}
{
    date -u; uname -r; nproc; uptime
    "$PYTHON" -c 'import sys, numpy, mlx.core as mx; print(sys.version.split()[0], "numpy", numpy.__version__, "mlx", mx.__version__)'
    git log -1 --format='%H %s' 2>/dev/null || true
    echo "$PYTHON -m ringcomm.bench.links --iproute .iproute --ranks $RANKS --rates $RATES --mtu 9000 --vs mlx -b 8M -e $MAXBYTES -f 2 --op all_sum,all_gather"
} >"$OUT/machine.txt" 2>&1
timeout 560 "$PYTHON" -m ringcomm.bench.links --iproute .iproute --ranks "$RANKS" --rates "$RATES" \
    --mtu 9000 --vs mlx -b 8M -e "$MAXBYTES" -f 2 --op all_sum,all_gather --time-limit 150 \
    --output "$OUT/links-16core.jsonl" >"$OUT/links-16core.txt" 2>"$OUT/links-16core.err"
rc=$?
echo "exit code $rc" >>"$OUT/machine.txt"
uptime >>"$OUT/machine.txt"
cat "$OUT/links-16core.txt"
exit $rc
