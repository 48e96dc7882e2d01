"""A user's program as a type checker sees it: every public function of ringcomm, with the
types it returns (tests/test_typing.py runs mypy --strict on this file; it is never run)."""
from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import numpy.typing as npt

import ringcomm


def main() -> None:
    group: ringcomm.Group = ringcomm.init(strict=False, timeout=30.0)
    ready: bool = ringcomm.is_initialized()
    x: npt.NDArray[np.float32] = np.ones(8, np.float32)
    rank: int = group.rank()
    size: int = group.size()

    total: np.ndarray = ringcomm.all_sum(x)
    largest: np.ndarray = ringcomm.all_max(x, group=group, out=np.empty_like(x))
    smallest: np.ndarray = ringcomm.all_min(x)
    rows: np.ndarray = ringcomm.all_gather(x)
    mine: np.ndarray = ringcomm.sum_scatter(np.ones(size * 2, np.float32))
    everyone: np.ndarray = ringcomm.broadcast(x, 0)
    swapped: np.ndarray = ringcomm.all_to_all(np.ones(size, np.float32))
    ringcomm.barrier()
    if size > 1:
        peer = (rank + 1) % size
        sent: np.ndarray = ringcomm.send(x, peer)
        got: np.ndarray = ringcomm.recv((8,), "float32", peer)
        like: np.ndarray = ringcomm.recv_like(x, peer)
        print(sent.shape, got.shape, like.shape)

    work: ringcomm.Work = ringcomm.all_sum(x, async_op=True)
    done: bool = work.is_completed()
    work.wait(timeout=5.0)
    error: BaseException | None = work.exception()
    works: list[ringcomm.Work] = [ringcomm.all_gather(x, async_op=True),
                                  ringcomm.barrier(async_op=True),
                                  ringcomm.broadcast(x, 0, async_op=True)]
    for w in works:
        w.wait()

    # issue 31 items 3 and 10: rooted and object collectives, futures, the description
    reduced: np.ndarray | None = ringcomm.reduce(x, 0, "max")
    gathered: np.ndarray | None = ringcomm.gather(x, 0, group=group)
    block: np.ndarray = ringcomm.scatter(np.ones(size * 2, np.float32), 0)
    by_method: np.ndarray | None = group.reduce(x, 0, op="min", out=np.empty_like(x))
    config: object = ringcomm.broadcast_object({"lr": 0.1}, 0)
    names: list[object] = ringcomm.all_gather_object(f"rank {rank}")
    pending: list[ringcomm.Work] = [ringcomm.reduce(x, 0, async_op=True),
                                    ringcomm.gather(x, 0, async_op=True),
                                    ringcomm.scatter(x, 0, async_op=True),
                                    ringcomm.broadcast_object(1, 0, async_op=True),
                                    ringcomm.all_gather_object(1, async_op=True)]
    results: list[object] = ringcomm.wait_all(pending, timeout=10.0)
    future: Future[object] = pending[0].get_future()
    info: ringcomm.GroupInfo = group.describe()
    transport: str = info.transport
    has_token: bool = info.has_token
    print(reduced, gathered, block, by_method, config, names, results, future.result(),
          transport, has_token, info.address, info.direct_links)
    try:
        ringcomm.broadcast_object(lambda: 0, 0)
    except ringcomm.ObjectError as e:
        print(e)

    subgroup: ringcomm.Group | None = group.split(rank % 2)
    if subgroup is not None:
        subgroup.close()
    try:
        ringcomm.all_sum(x)
    except ringcomm.PeerLostError as e:
        print(e)
    except ringcomm.RingcommError as e:
        print(e)
    version: str = ringcomm.__version__
    dtypes = ringcomm.SUPPORTED_DTYPES
    print(total, largest, smallest, rows, mine, everyone, swapped, done, error, version, dtypes, ready)
    group.close()


def wrong() -> None:
    """Lines a type checker must flag (checked by the test, one error each)."""
    work: np.ndarray = ringcomm.all_sum(np.ones(2), async_op=True)  # E: a Work, not an array
    result: ringcomm.Work = ringcomm.all_sum(np.ones(2))  # E: an array, not a Work
    print(work, result)
