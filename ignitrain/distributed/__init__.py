"""Run one training function on one process, on spawned processes, or under ``torchrun``.

:func:`launch` is a thin layer over :class:`ignite.distributed.Parallel` so that the
same script runs unchanged in the three usual ways::

    python train.py                             # one process, no process group
    python train.py --nproc 2                   # launch(..., nproc_per_node=2) spawns 2
    torchrun --nproc_per_node=2 train.py        # launch(...) joins torchrun's group

Multi-node jobs use ``torchrun`` on every node (``--nnodes=2 --node_rank=i
--master_addr=HOST --master_port=PORT``) with the ``nccl`` backend on GPUs; ``launch``
joins the group torchrun set up.

The rank helpers (:func:`is_rank_zero`, :func:`rank_zero_only`, :func:`agree_any`,
:func:`agree_all`, :func:`broadcast_object`, :func:`world_size`, :func:`barrier`) are
no-ops on a single process, so code written with them runs in all three modes.

One concept per module: :mod:`~ignitrain.distributed.launcher` forms the job (spawn,
torchrun, one process); :mod:`~ignitrain.distributed.collectives` holds the rank
helpers and the collectives, all over ``ignite.distributed`` (``idist``).
"""

from ignitrain.distributed.collectives import (
    agree_all,
    agree_any,
    all_gather_object,
    barrier,
    broadcast_object,
    is_rank_zero,
    own_rank_state,
    rank_zero_only,
    with_rank_states,
    world_size,
)
from ignitrain.distributed.launcher import free_port, launch

__all__ = [
    "agree_all",
    "agree_any",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "free_port",
    "is_rank_zero",
    "launch",
    "own_rank_state",
    "rank_zero_only",
    "with_rank_states",
    "world_size",
]
