"""Alpha-beta times of the collectives one training step runs, on a cluster of nodes of `gpus_per_node` GPUs.

A process group is `size` ranks `stride` apart (DeepSpeed lays ranks out node by node: an expert-parallel group
is `ep` consecutive ranks, an expert-data-parallel group is every `ep`-th rank). A group whose ranks all sit on one
node uses the intra-node link (NVLink); one that spans nodes is limited by the inter-node link (each GPU's NIC),
as in NCCL's rings across nodes. Bandwidths are per GPU and per direction; `nbytes` is the whole tensor a rank
holds (the gradient buffer, or everything one rank sends in an all-to-all).

We write these few formulas rather than use a library: none that we depend on models collective times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moe.simulate.cluster import Cluster


@dataclass(frozen=True)
class Group:
    size: int
    stride: int = 1

    def spans_nodes(self, gpus_per_node: int) -> bool:
        return self.size > 1 and self.stride * (self.size - 1) >= gpus_per_node

    def ranks_per_node(self, gpus_per_node: int) -> int:
        """Members of the group on one node (at least 1)."""
        return max(1, min(self.size, gpus_per_node // self.stride)) if self.stride <= gpus_per_node else 1


def _steps(size: int) -> int:
    return math.ceil(math.log2(size)) if size > 1 else 0  # latency rounds of a tree / recursive-halving collective


def reduce_scatter(nbytes: float, group: Group, cluster: Cluster) -> float:
    """Each rank ends with 1/n of the sum: (n-1)/n of the buffer crosses its link."""
    if group.size <= 1:
        return 0.0
    inter = group.spans_nodes(cluster.gpus_per_node)
    return (group.size - 1) / group.size * nbytes / cluster.bandwidth(inter) + _steps(group.size) * cluster.latency(
        inter
    )


def all_gather(nbytes: float, group: Group, cluster: Cluster) -> float:
    """The mirror of reduce-scatter: the same bytes and rounds."""
    return reduce_scatter(nbytes, group, cluster)


def all_reduce(nbytes: float, group: Group, cluster: Cluster) -> float:
    """Ring all-reduce = reduce-scatter + all-gather: 2(n-1)/n of the buffer."""
    return 2 * reduce_scatter(nbytes, group, cluster)


def all_to_all(nbytes: float, group: Group, cluster: Cluster) -> float:
    """Each rank sends 1/n of `nbytes` to every other rank, all at once: the peers on its node over the intra-node
    link and the others over its NIC, in parallel; one latency per peer."""
    n = group.size
    if n <= 1:
        return 0.0
    local = group.ranks_per_node(cluster.gpus_per_node)
    intra_bytes = (local - 1) / n * nbytes
    inter_bytes = (n - local) / n * nbytes
    time = max(intra_bytes / cluster.bandwidth(False), inter_bytes / cluster.bandwidth(True))
    return time + (local - 1) * cluster.latency(False) + (n - local) * cluster.latency(True)


def send_recv(nbytes: float, inter_node: bool, cluster: Cluster) -> float:
    """One point-to-point transfer (pipeline activations or their gradients)."""
    return nbytes / cluster.bandwidth(inter_node) + cluster.latency(inter_node)
