"""Deterministic, resumable, data-parallel batches.

The sample stream is the concatenation of per-epoch permutations, each seeded by (seed, epoch). Global
micro-batch m covers stream positions [m*G, (m+1)*G) with G = micro_batch * dp_size, and data-parallel rank r
takes its contiguous slice. A batch is a pure function of (seed, m), so resuming at m continues exactly.
The trainer addresses batches by stream position instead (`at_sample(samples consumed)`), so a run resumed with
another data-parallel size, micro-batch or accumulation continues at the next unseen sample.
"""

from __future__ import annotations

import torch


class BlockBatches:
    def __init__(self, blocks, micro_batch: int, dp_rank: int, dp_size: int, seed: int, shuffle: bool = True):
        self.blocks, self.micro_batch = blocks, micro_batch
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.shuffle = seed, shuffle
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def samples_per_micro_step(self) -> int:
        return self.micro_batch * self.dp_size

    def _block_index(self, position: int) -> int:
        n = len(self.blocks)
        epoch, offset = divmod(position, n)
        if not self.shuffle:
            return offset
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))}
        return int(self._perms[epoch][offset])

    def batch(self, micro_step: int) -> torch.Tensor:
        """The (micro_batch, seq_len) int64 batch this rank trains on at global micro-step `micro_step`."""
        return self.at_sample(micro_step * self.samples_per_micro_step)

    def at_sample(self, position: int) -> torch.Tensor:
        """This rank's (micro_batch, seq_len) int64 slice of the global micro-batch starting at stream `position`."""
        start = position + self.dp_rank * self.micro_batch
        rows = [self._block_index(p) for p in range(start, start + self.micro_batch)]
        return self.blocks[rows]["input_ids"].long()
