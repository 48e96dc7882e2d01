"""The README's example: python -m ringcomm.launch -n 3 examples/demo.py"""
import numpy as np

import ringcomm

group = ringcomm.init()
x = np.full(1000, group.rank(), np.float32)
total = ringcomm.all_sum(x)
rows = ringcomm.all_gather(x[None])
mine = ringcomm.sum_scatter(np.ones((group.size() * 2, 3)))
right, left = (group.rank() + 1) % group.size(), (group.rank() - 1) % group.size()
if group.size() > 1 and group.rank() % 2 == 0:  # pass x one rank to the right
    ringcomm.send(x, right); got = ringcomm.recv_like(x, left)
elif group.size() > 1:
    got = ringcomm.recv_like(x, left); ringcomm.send(x, right)
print(f"rank {group.rank()}: total[0]={total[0]:g} rows={rows.shape} mine={mine.tolist()}"
      + (f" got {got[0]:g} from rank {left}" if group.size() > 1 else ""))
