"""Data-parallel recording with accelerate: each process records a shard, all get the total.

Under `torchrun --nproc_per_node N` (or `accelerate launch` on GPUs) every
process holds a full copy of the model.  `Steerer(..., accelerator=...)`
then records only this process's contiguous block of each prompt set
(`split_between_processes`) and `gather_activations` combines the blocks with
accelerate's collectives: the float32 sums and the counts are summed
(`reduce`), the per-prompt rows are padded, gathered and trimmed in rank
order.  Because the blocks are contiguous and gathered in rank order, every
process ends with the same `Activations` a single process would record, rows
in the same prompt order; only the order of float32 additions differs.

Recording on CPU with several processes: accelerate's own launcher starts one
process for `--cpu` unless MPI is set up, so use
`python -m torch.distributed.run --nproc_per_node 2 script.py` with
`PartialState(cpu=True)` (gloo backend).
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from steerpeft.activations import Activations
from steerpeft.errors import DataError

T = TypeVar("T")


def num_processes(accelerator: Any | None) -> int:
    """How many processes share the work (1 without an accelerator)."""
    return 1 if accelerator is None else int(accelerator.num_processes)


def local_shard(accelerator: Any, items: list[T]) -> list[T]:
    """This process's contiguous block of `items`; the first processes take one extra when uneven."""
    with accelerator.split_between_processes(list(items)) as shard:
        return list(shard)


def _count_failures(accelerator: Any, failed: bool) -> int:
    from accelerate.utils import reduce

    flag = torch.tensor([1 if failed else 0], dtype=torch.long, device=accelerator.device)
    return int(reduce(flag, "sum").item())


def announce_failure(accelerator: Any) -> None:
    """Tell the other processes that this one's recording failed (it then re-raises its error).

    Pairs with the first collective of `gather_activations`, so the others
    raise too instead of waiting forever for this process.
    """
    _count_failures(accelerator, True)


def gather_activations(
    accelerator: Any, local: Activations, layers: list[int], hidden_size: int, keep_per_prompt: bool
) -> Activations:
    """Combine every process's `Activations` of its shard into those of the whole prompt set.

    Every process must call this (or `announce_failure`), in the same order,
    with the same `layers`.
    """
    from accelerate.utils import gather, pad_across_processes, reduce

    device = accelerator.device
    failures = _count_failures(accelerator, False)
    if failures:
        raise DataError(
            f"Recording failed on {failures} of {accelerator.num_processes} processes; "
            "see the error printed by the failing process."
        )
    layers = sorted(layers)
    sums = torch.stack([local.sums[layer].float() for layer in layers]).to(device)
    sums = reduce(sums, "sum").cpu()
    counts = reduce(
        torch.tensor([local.count, local.num_prompts], dtype=torch.long, device=device), "sum"
    ).cpu()
    per_prompt = None
    if keep_per_prompt:
        if local.per_prompt is not None and local.num_prompts:
            rows = torch.stack([local.per_prompt[layer].float() for layer in layers], dim=1)
        else:
            rows = torch.zeros(0, len(layers), hidden_size)
        lengths = gather(torch.tensor([rows.shape[0]], dtype=torch.long, device=device)).cpu().tolist()
        padded = gather(pad_across_processes(rows.to(device), dim=0)).cpu()
        width = padded.shape[0] // len(lengths)
        ordered = torch.cat([padded[rank * width : rank * width + n] for rank, n in enumerate(lengths)])
        if ordered.shape[0]:
            per_prompt = {layer: ordered[:, index].contiguous() for index, layer in enumerate(layers)}
    return Activations(
        list(layers),
        {layer: sums[index].clone() for index, layer in enumerate(layers)},
        int(counts[0]),
        int(counts[1]),
        per_prompt,
    )
