"""RDMA on a real verbs stack: Soft-RoCE (the kernel's rdma_rxe) in a QEMU guest.

Run INSIDE the guest that tests/test_rxe.py boots (tests/rxe/run.sh, then
tests/rxe/guest-tests.sh); not collected on the host (its name is not test_*.py).  Real
kernel verbs, real libibverbs and its rxe provider, on veth pairs (a device per link:
/run/rxe/mesh.json), driven by both verbs providers: Debian's pyverbs and ringcomm's ctypes
binding (transports/verbs_ctypes.py).  Each test records what ran (stack, provider, sizes,
injected loss, the devices' hardware counters) as a line of JSON in $RXE_RESULTS, which
test_rxe.py reads back.

Under TCG the guest moves a few MB/s, so sizes are chosen to prove the protocol, not speed:
4 MiB all_sum/all_gather (many frames per link, the credits wrap many times), 280 KB sends
between every ordered pair of 4 ranks (direct queue pairs between non-neighbours), small
arrays of every dtype.
"""
from __future__ import annotations

import glob
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringcomm.ports import free_ports
from tests.procs import ROOT, env

MESH = Path("/run/rxe/mesh.json")
RESULTS = os.environ.get("RXE_RESULTS")
RANK_TIMEOUT = 120  # ringcomm's deadline inside the guest (TCG is slow)

pytestmark = pytest.mark.skipif(not MESH.exists(), reason="not in the rxe guest (no "
                                "/run/rxe/mesh.json): tests/test_rxe.py boots it")


@pytest.fixture(params=["pyverbs", "ctypes"])
def provider(request) -> str:
    if request.param == "pyverbs":
        try:
            import pyverbs  # noqa: F401
        except ImportError as e:
            pytest.skip(f"pyverbs does not import for {sys.executable} ({e})")
    return request.param


def devices(n: int, shared: bool = False) -> list:
    """The first n ranks' part of the mesh (a device per link), or all on rxe0 (shared)."""
    mesh = json.loads(MESH.read_text())
    return [[None if i == j else ("rxe0" if shared else mesh[i][j]) for j in range(n)]
            for i in range(n)]


def veths(n: int) -> list[str]:
    """The veth ends under the devices the first n ranks use."""
    return [f"v{i}{j}" for i in range(n) for j in range(n) if i != j]


def counters() -> dict[str, int]:
    """Each rxe hardware counter, summed over every device."""
    total: dict[str, int] = {}
    for path in glob.glob("/sys/class/infiniband/*/ports/1/hw_counters/*"):
        try:
            total[os.path.basename(path)] = total.get(os.path.basename(path), 0) + \
                int(Path(path).read_text())
        except (OSError, ValueError):
            pass
    return total


def record(name: str, provider: str, **facts) -> None:
    facts.update(test=name, provider=provider,
                 stack=f"rxe (rdma_rxe, kernel {platform.release()}) through {provider}")
    if RESULTS:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(json.dumps(facts) + "\n")


def run_ranks(n: int, scenario: str, provider: str, tmp_path: Path, *, shared: bool = False,
              timeout: float = 2 * RANK_TIMEOUT + 60, **extra: str) -> list[dict]:
    """Start n ranks of tests/rxe_work.py, wait for all; each rank's RESULT or ERROR record
    (with its exit status and the tail of its stderr)."""
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(devices(n, shared)))
    config = {"MLX_IBV_DEVICES": str(path), "RXE_VERBS": provider,
              "MLX_JACCL_COORDINATOR": f"127.0.0.1:{free_ports(1)[0]}",
              "RINGCOMM_TIMEOUT": str(RANK_TIMEOUT), **extra}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.rxe_work", scenario], cwd=ROOT,
                              env=env(MLX_RANK=str(r), **config), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(n)]
    deadline = time.monotonic() + timeout
    out = []
    for r, p in enumerate(procs):
        try:
            stdout, stderr = p.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:  # past its own deadline: a hang, told as such
            for q in procs:
                q.kill()
            stdout, stderr = p.communicate()
            stderr += f"\n(killed: still running {timeout:.0f} s after start, its deadline " \
                      f"{RANK_TIMEOUT} s)"
        rec = {"rank": r, "rc": p.returncode, "stderr": stderr[-2000:]}
        for line in stdout.splitlines():
            kind, _, blob = line.partition(" ")
            if kind in ("RESULT", "ERROR"):
                rec.update(json.loads(blob), outcome=kind)
        out.append(rec)
    return out


def assert_all_right(ranks: list[dict]) -> None:
    bad = [r for r in ranks if r["rc"] != 0 or r.get("outcome") != "RESULT"]
    assert not bad, json.dumps(bad, indent=1)
    assert not any(r["emulated"] for r in ranks)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("n,shared", [(2, True), (3, False)], ids=["2 ranks on rxe0",
                                                                  "3 ranks, a device per link"])
def test_every_collective_and_dtype_against_numpy(provider, tmp_path, n, shared):
    start = time.monotonic()
    ranks = run_ranks(n, "collectives", provider, tmp_path, shared=shared)
    assert_all_right(ranks)
    record("collectives", provider, ranks=n, shared_device=shared, calls=ranks[0]["calls"],
           elements=n * 1537, seconds=round(time.monotonic() - start, 1))


@pytest.mark.timeout(900)
def test_four_ranks_everything(provider, tmp_path):
    """Collectives (every dtype, and 4 MiB float32), broadcast from every root, all_to_all,
    send/recv between all 12 ordered pairs, split, 40 async operations."""
    start, before = time.monotonic(), counters()
    ranks = run_ranks(4, "everything", provider, tmp_path)
    assert_all_right(ranks)
    after = counters()
    record("everything", provider, ranks=4, calls=ranks[0]["calls"], big_bytes=4 << 20,
           sent_packets=after.get("sent_pkts", 0) - before.get("sent_pkts", 0),
           seconds=round(time.monotonic() - start, 1))


@pytest.mark.timeout(600)
def test_a_sigkilled_rank_is_named_by_the_others(provider, tmp_path):
    ranks = run_ranks(3, "survive", provider, tmp_path,
                      RXE_STOP=json.dumps({"rank": 1, "how": "sigkill"}))
    assert ranks[1]["rc"] == -9
    for r in (ranks[0], ranks[2]):
        assert r["rc"] == 0 and r.get("error") in ("PeerLostError", "CommError"), r
        assert r["peer"] == 1 and "rank 1" in r["message"], r
        assert r["after"] < 10, r
    record("sigkill", provider, ranks=3, named_after=[ranks[0]["after"], ranks[2]["after"]],
           errors=[ranks[0]["error"], ranks[2]["error"]])


@pytest.mark.timeout(600)
def test_a_link_taken_down_is_a_typed_error_on_every_rank(provider, tmp_path):
    """Rank 0 takes down the veth under its device toward rank 1 (``ip link set v01 down``)
    after three 4 MiB all_sums: no rank may hang or return a wrong sum."""
    try:
        ranks = run_ranks(3, "survive", provider, tmp_path, RINGCOMM_TIMEOUT="30",
                          RXE_STOP=json.dumps({"rank": 0, "how": "command",
                                               "command": "ip link set v01 down"}))
    finally:
        subprocess.run(["ip", "link", "set", "v01", "up"], check=True)
        wait_active("rxe01")
    for r in ranks:
        assert r["rc"] == 0 and r.get("error") in ("PeerLostError", "CommError",
                                                   "CommTimeoutError"), r
        assert r["after"] < 30 + 10, r
    record("link down", provider, ranks=3, link="v01",
           errors=[r["error"] for r in ranks], after=[r["after"] for r in ranks])


def wait_active(device: str, seconds: float = 30) -> None:
    state = Path(f"/sys/class/infiniband/{device}/ports/1/state")
    deadline = time.monotonic() + seconds
    while "ACTIVE" not in state.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("netem", ["loss 0.5%", "loss 2%", "corrupt 1%"])
def test_loss_costs_speed_never_a_wrong_byte(provider, tmp_path, netem):
    """netem on every veth under the 3 ranks' devices: all_sum and all_gather of 1 MiB stay
    exact.  Corruption is loss too: RoCE's ICRC drops a damaged packet."""
    links = veths(3)
    for link in links:
        subprocess.run(["tc", "qdisc", "add", "dev", link, "root", "netem", *netem.split()],
                       check=True)
    start, before = time.monotonic(), counters()
    try:
        ranks = run_ranks(3, "lossy", provider, tmp_path, RXE_CALLS="4")
    finally:
        for link in links:
            subprocess.run(["tc", "qdisc", "del", "dev", link, "root"], check=False)
    after = counters()
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    # every device is in this guest: packets sent and never received were lost on the wire
    lost = delta.get("sent_pkts", 0) - delta.get("rcvd_pkts", 0)
    record("loss", provider, ranks=3, netem=netem, calls=8, bytes_per_call=1 << 20,
           lost_packets=lost, counters=delta, seconds=round(time.monotonic() - start, 1))
    assert_all_right(ranks)
    assert lost > 0, f"no packet was lost ({delta}): the test proved nothing"


def load_provider(name: str):
    """The provider namespace, as the transport gets it (ctypes loadable before its wiring)."""
    from tests.rxe_work import provider
    os.environ["RXE_VERBS"] = name
    provider()
    from ringcomm.transports import verbs
    return verbs.load(name)


@pytest.mark.timeout(300)
def test_uc_queue_pairs_carry_sends_through_the_operations_table(provider):
    """Below the transport: two unreliable-connected queue pairs (the only type Thunderbolt
    offers) on rxe01 and rxe10, 64 messages of 4 KiB sent and received, each checked; the
    posts and polls go through the device's operations table (ctypes) or pyverbs."""
    api = load_provider(provider)
    e = api.enums
    ends = []
    for name in ("rxe01", "rxe10"):
        ctx = api.Context(name=name)
        pd = api.PD(ctx)
        mr = api.MR(pd, 1 << 20, e.IBV_ACCESS_LOCAL_WRITE)
        cq = api.CQ(ctx, 256)
        cap = api.QPCap(max_send_wr=64, max_recv_wr=64, max_send_sge=1, max_recv_sge=1)
        qp = api.QP(pd, api.QPInitAttr(qp_type=e.IBV_QPT_UC, scq=cq, rcq=cq, cap=cap,
                                       sq_sig_all=1))
        attr = api.QPAttr(qp_state=e.IBV_QPS_INIT, port_num=1)
        attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE
        qp.to_init(attr)
        ends.append((ctx, pd, mr, cq, qp, ctx.query_gid(1, 0).gid))
    for (ctx, _, _, _, qp, _), (_, _, _, _, peer, gid) in zip(ends, ends[::-1]):
        attr = api.QPAttr(qp_state=e.IBV_QPS_RTR, port_num=1)
        attr.path_mtu, attr.dest_qp_num, attr.rq_psn = e.IBV_MTU_1024, peer.qp_num, 0
        attr.ah_attr = api.AHAttr(port_num=1, is_global=1, dlid=0, sl=0,
                                  gr=api.GlobalRoute(dgid=api.GID(gid), sgid_index=0,
                                                     hop_limit=1))
        qp.to_rtr(attr)
        attr.qp_state, attr.sq_psn = e.IBV_QPS_RTS, 0
        qp.to_rts(attr)
    (_, _, smr, scq, sqp, _), (_, _, rmr, rcq, rqp, _) = ends
    n, size = 64, 4096
    for i in range(n):
        rqp.post_recv(api.RecvWR(wr_id=i, num_sge=1,
                                 sg=[api.SGE(rmr.buf + i * size, size, rmr.lkey)]))
    payload = bytes(range(256)) * (n * size // 256)
    smr.write(payload, len(payload))
    for i in range(n):
        sqp.post_send(api.SendWR(wr_id=1000 + i, num_sge=1, opcode=e.IBV_WR_SEND,
                                 send_flags=e.IBV_SEND_SIGNALED,
                                 sg=[api.SGE(smr.buf + i * size, size, smr.lkey)]))
    got, deadline = {}, time.monotonic() + 60
    while len(got) < 2 * n and time.monotonic() < deadline:
        for cq in (scq, rcq):
            _, wcs = cq.poll(16)
            got.update({wc.wr_id: (wc.status, wc.byte_len) for wc in wcs})
    assert all(got.get(i) == (e.IBV_WC_SUCCESS, size) for i in range(n)), got
    assert all(got.get(1000 + i, (None,))[0] == e.IBV_WC_SUCCESS for i in range(n)), got
    assert rmr.read(len(payload), 0) == payload
    for ctx, pd, mr, cq, qp, _ in ends:
        for obj in (qp, mr, cq, pd, ctx):
            obj.close()
    record("UC queue pairs", provider, messages=n, bytes=size, qp_type="UC")
