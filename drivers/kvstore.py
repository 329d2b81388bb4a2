"""KVStorage: the physical key/value blocks of every layer, as two tensors.

Layout: ``k`` and ``v`` are ``[n_layers, num_blocks, block_size, n_kv_heads, head_dim]``. A token at
position p of a sequence whose block table is ``bt`` lives in block ``bt[p // block_size]`` at
offset ``p % block_size``; its flat slot is ``block * block_size + offset``. One block more than
``num_blocks`` is allocated: ``pad_block`` (= num_blocks), which the kernel never hands out (its
allocator knows num_blocks). Padded rows of a captured decode step (drivers/cudagraph.py) read
and write only there.

On a CPU the pool is zeroed by the operating system, page by page as it is first written
(calloc through numpy): a boot holds only what is used, not the whole pool (torch.zeros writes
every page: 4 GiB of RSS and ~2 s at boot for a pool a small model rarely fills).

This object knows nothing about owners, refcounts or hashes: the kernel's kvcache decides which
block ids are used; this file only moves bytes (copy for copy-on-write, swap to and from host).
"""

from __future__ import annotations

import numpy as np
import torch


class KVStorage:
    """Physical KV blocks. Caller (the kernel) owns block ids; never called during a forward."""

    def __init__(self, n_layers: int, num_blocks: int, block_size: int, n_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"KV pool needs at least one block of one token "
                             f"(got {num_blocks} blocks of {block_size})")
        shape = (n_layers, num_blocks + 1, block_size, n_kv_heads, head_dim)     # + the pad block
        self.num_blocks, self.block_size, self.pad_block = num_blocks, block_size, num_blocks
        self.dtype, self.device = dtype, torch.device(device)
        self.k = _untouched_zeros(shape, dtype, self.device)
        self.v = _untouched_zeros(shape, dtype, self.device)
        self.bytes_per_block = 2 * n_layers * block_size * n_kv_heads * head_dim * self.k.element_size()

    def copy_block(self, src: int, dst: int) -> None:
        """Copy every layer's K and V of block src into block dst (copy-on-write)."""
        self.k[:, dst].copy_(self.k[:, src])
        self.v[:, dst].copy_(self.v[:, src])

    def fill_block(self, block: int, value: float) -> None:
        """Overwrite every layer's K and V of a block with value (debug: poison freed blocks)."""
        self.k[:, block].fill_(value)
        self.v[:, block].fill_(value)

    def swap_out(self, block_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return a host copy of these blocks (pinned when the pool is on a GPU); bit-exact."""
        idx = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        pin = self.device.type == "cuda"
        k = self.k.index_select(1, idx).to("cpu")
        v = self.v.index_select(1, idx).to("cpu")
        if pin:
            k, v = k.pin_memory(), v.pin_memory()
        return k, v

    def swap_in(self, handle: tuple[torch.Tensor, torch.Tensor], block_ids: list[int]) -> None:
        """Write a swap_out() handle back into (possibly different) blocks."""
        k, v = handle
        if k.shape[1] != len(block_ids):
            raise ValueError(f"swap_in: handle holds {k.shape[1]} blocks, {len(block_ids)} given")
        idx = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        self.k.index_copy_(1, idx, k.to(self.device, non_blocking=True))
        self.v.index_copy_(1, idx, v.to(self.device, non_blocking=True))

    @staticmethod
    def handle_bytes(handle: tuple[torch.Tensor, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in handle)


def _untouched_zeros(shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor whose host pages are not touched until written (CPU); torch.zeros elsewhere."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    return torch.from_numpy(np.zeros(nbytes, dtype=np.uint8)).view(dtype).view(shape)
