"""``ringcomm-bench --transport rdma`` on Soft-RoCE against TCP on the same veth pair, in one
guest run:

    python -m ringcomm.bench.rdma_rxe --output docs/perf/rdma-rxe.txt    (from a checkout)

Boots the guest of ``tests/rxe/run.sh`` (Debian's kernel under QEMU, rdma_rxe on veth pairs;
root, TCG where KVM is unusable) and, inside, runs two ranks of ringcomm-bench three times
over the veth pair v01/v10: RDMA through pyverbs and through the ctypes provider (devices
rxe01 and rxe10, one per end), then TCP, with v10 moved into a network namespace of its own
so that the TCP bytes cross the same veth (two addresses of one namespace would talk over
loopback).  rxe is software and the guest is emulated: the figures compare RDMA with TCP on
the same link and the same emulated CPU; they say nothing of RDMA hardware.  Writes one text
file: the command, each pass's table, and a side-by-side table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
RUN = CHECKOUT / "tests" / "rxe" / "run.sh"
SWEEP = ["-b", "4K", "-e", "4M", "-f", "4", "-w", "2", "--iters", "5", "--op",
         "all_sum,all_gather", "--progress", "0"]
# (transport, provider, veth MTU): rxe's path MTU follows the veth's (1500: 1024, 9000: 4096)
PASSES = (("rdma", "pyverbs", 1500), ("rdma", "ctypes", 1500), ("rdma", "ctypes", 9000),
          ("tcp", "", 9000), ("tcp", "", 1500))


def rank_main(argv: list[str]) -> int:
    """A bench rank in the guest; "ctypes" made loadable where transports/verbs.py does not
    know it yet (its wiring is another change of issue 30)."""
    from ringcomm.transports import settings, verbs
    if os.environ.get("RINGCOMM_VERBS") == "ctypes" and "ctypes" not in settings.VERBS_PROVIDERS:
        from ringcomm.transports import verbs_ctypes
        settings.VERBS_PROVIDERS = (*settings.VERBS_PROVIDERS, "ctypes")
        plain = verbs.load
        verbs.load = lambda p=None: verbs_ctypes if (p or settings.load().verbs) == "ctypes" \
            else plain(p)
    from ringcomm.bench.cli import main
    return main(argv)


def sh(command: str) -> None:
    subprocess.run(command, shell=True, check=True)


def rxe_packets() -> int:
    """Packets the rxe devices sent so far (all of them are this guest's)."""
    total = 0
    for path in Path("/sys/class/infiniband").glob("*/ports/1/hw_counters/sent_pkts"):
        total += int(path.read_text())
    return total


def set_mtu(mtu: int, netns: bool) -> None:
    sh(f"ip link set v01 mtu {mtu} && ip {'-n p1 ' if netns else ''}link set v10 mtu {mtu}")


def one_pass(transport: str, provider: str, job: Path) -> tuple[str, list[dict]]:
    """Two ranks of ringcomm-bench over v01/v10: the table printed and the records."""
    port = 40000 + len(list(job.glob("bench-*")))
    out = job / f"bench-{port}.jsonl"
    env = dict(os.environ, RINGCOMM_TIMEOUT="300")
    prefixes = [[], []]
    if transport == "rdma":
        devices = job / "devices.json"
        devices.write_text(json.dumps([[None, "rxe01"], ["rxe10", None]]))
        env.update(MLX_IBV_DEVICES=str(devices), MLX_JACCL_COORDINATOR=f"127.0.0.1:{port}",
                   RINGCOMM_VERBS=provider, RINGCOMM_BACKEND="rdma")
    elif not Path("/run/netns/p1").exists():  # v10 into a namespace: the bytes cross the veth
        sh("ip netns add p1 && ip link set v10 netns p1 && "
           "ip -n p1 addr add 10.30.0.2/24 dev v10 && ip -n p1 link set v10 up && "
           "ip -n p1 link set lo up && ip addr add 10.30.0.1/24 dev v01")
    if transport == "tcp":
        hostfile = job / "hostfile.json"
        hostfile.write_text(json.dumps([[f"10.30.0.1:{port}"], [f"10.30.0.2:{port}"]]))
        env.update(MLX_HOSTFILE=str(hostfile))
        prefixes[1] = ["ip", "netns", "exec", "p1"]
    command = [sys.executable, "-m", "ringcomm.bench.rdma_rxe", "--rank", "--transport",
               transport, *SWEEP, "--output", str(out)]
    procs = [subprocess.Popen([*prefixes[r], *command], env=dict(env, MLX_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    texts = [p.communicate(timeout=1200)[0] for p in procs]
    records = [json.loads(line) for line in out.read_text().splitlines()] \
        if out.exists() else []
    return texts[0] + (f"\n(rank 1 exit {procs[1].returncode}: {texts[1][-2000:]})"
                       if procs[1].returncode else ""), records


def side_by_side(runs: dict[str, list[dict]]) -> list[str]:
    names = list(runs)
    tcp_name = names[-1]  # TCP at MTU 1500: what RDMA at MTU 1500 is compared with
    rdma = [n for n in names if not n.startswith("tcp")]
    lines = ["| op | bytes | " + " | ".join(f"{n}: us (busbw GB/s)" for n in names)
             + " | " + " | ".join(f"{n} / {tcp_name}" for n in rdma) + " |",
             "|---" * (2 + len(names) + len(rdma)) + "|"]
    by = {n: {(r["op"], r["bytes"]): r for r in recs} for n, recs in runs.items()}
    for key in sorted(by.get(tcp_name, {}), key=lambda k: (k[0], k[1])):
        cells = [f"{by[n][key]['time_us']:.0f} ({by[n][key]['busbw_gbps']:.3f})"
                 if key in by[n] else "-" for n in names]
        tcp = by[tcp_name][key]["time_us"]
        ratios = [f"{by[n][key]['time_us'] / tcp:.2f}" if key in by[n] else "-"
                  for n in rdma]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells + ratios) + " |")
    return lines


def in_guest(job: Path) -> int:
    # Debian's pyverbs (built for /usr/bin/python3, the same version as ours), offered alone
    pv = Path("/run/pyverbs-path")
    pv.mkdir(exist_ok=True)
    if Path("/usr/lib/python3/dist-packages/pyverbs").is_dir():
        (pv / "pyverbs").unlink(missing_ok=True)
        (pv / "pyverbs").symlink_to("/usr/lib/python3/dist-packages/pyverbs")
    os.environ["PYTHONPATH"] = f"{CHECKOUT}:{pv}"
    runs, tables = {}, []
    for transport, provider, mtu in PASSES:
        name = f"{transport}{f' ({provider})' if provider else ''}, MTU {mtu}"
        set_mtu(mtu, netns=Path("/run/netns/p1").exists())
        if transport == "rdma":
            time.sleep(1)  # rxe's port takes the new MTU
        start, packets = time.monotonic(), rxe_packets()
        text, records = one_pass(transport, provider, job)
        runs[name] = records
        sent = f", {rxe_packets() - packets} RoCE packets sent" if transport == "rdma" else ""
        tables += [f"## {name}: {time.monotonic() - start:.0f} s{sent}", "", "```",
                   text.strip(), "```", ""]
    (job / "bench.md").write_text("\n".join(
        ["## side by side (time per call; ratio < 1: faster than TCP)", "",
         *side_by_side(runs), "", *tables]) + "\n")
    return 0


def on_host(output: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="rdma-rxe-") as tmp:
        job = Path(tmp)
        start = time.monotonic()
        proc = subprocess.run(
            [str(RUN), f"PYTHONPATH={CHECKOUT} {sys.executable} -m ringcomm.bench.rdma_rxe "
                       "--in-guest /run/job"], cwd=CHECKOUT,
            env=dict(os.environ, RXE_JOB=str(job), RXE_RANKS="2"), text=True,
            capture_output=True)
        if not (job / "bench.md").exists():
            print(proc.stdout[-5000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        text = "\n".join([
            "# ringcomm-bench on Soft-RoCE (rxe) against TCP on the same veth, in a QEMU guest",
            "", "command: python -m ringcomm.bench.rdma_rxe" + (f" --output {output}"
                                                                 if output else ""),
            f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; host: "
            f"{os.cpu_count()} CPUs, guest under "
            f"{'KVM' if 'kvm VM' in proc.stderr else 'TCG (software emulation)'}; "
            f"whole run {time.monotonic() - start:.0f} s",
            "sweep per pass: ringcomm-bench " + " ".join(SWEEP), "",
            (job / "bench.md").read_text()])
    print(text)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rank"]:
        return rank_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m ringcomm.bench.rdma_rxe",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--output", help="the result file to write (also printed)")
    p.add_argument("--in-guest", metavar="JOB", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.in_guest:
        return in_guest(Path(args.in_guest))
    return on_host(args.output)


if __name__ == "__main__":
    sys.exit(main())
