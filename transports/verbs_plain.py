"""The plain verbs objects every provider shares, as pyverbs spells them: ``GID``, ``SGE``,
``QPCap``, ``GlobalRoute``.  Data only; each provider turns them into what its device takes
(the ctypes provider into ``verbs.h``'s structures, the emulation and NULL verbs read them)."""
from __future__ import annotations


class GID:
    """A 16-byte global identifier, printed as eight groups of four hex digits (pyverbs')."""

    def __init__(self, val: str | None = None) -> None:
        self._raw = bytes(16) if val is None else bytes.fromhex(val.replace(":", ""))

    @property
    def gid(self) -> str:
        h = self._raw.hex()
        return ":".join(h[i:i + 4] for i in range(0, 32, 4))

    @gid.setter
    def gid(self, val: str) -> None:
        self._raw = bytes.fromhex(val.replace(":", ""))

    def __str__(self) -> str:
        return self.gid


class SGE:
    def __init__(self, addr: int, length: int, lkey: int) -> None:
        self.addr, self.length, self.lkey = addr, length, lkey


class QPCap:
    def __init__(self, max_send_wr: int = 1, max_recv_wr: int = 10, max_send_sge: int = 1,
                 max_recv_sge: int = 1, max_inline_data: int = 0) -> None:
        self.max_send_wr, self.max_recv_wr = max_send_wr, max_recv_wr
        self.max_send_sge, self.max_recv_sge = max_send_sge, max_recv_sge
        self.max_inline_data = max_inline_data


class GlobalRoute:
    def __init__(self, dgid: GID | None = None, flow_label: int = 0, sgid_index: int = 0,
                 hop_limit: int = 1, traffic_class: int = 0) -> None:
        self.dgid, self.flow_label, self.sgid_index = dgid, flow_label, sgid_index
        self.hop_limit, self.traffic_class = hop_limit, traffic_class
