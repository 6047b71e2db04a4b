"""What a training step logs: values of one process, each with the rule that combines it across processes.

Statistics of a whole batch (the token rewards, the global scores) are kept as exact moments — a count, a sum, a sum
of squares, the extremes — which reduce exactly across processes, so the logged mean and standard deviation do not
depend on how the batch was sharded.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch


Reduction = Literal["mean", "sum", "min", "max"]
_REDUCE: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda values: sum(values) / len(values),
    "sum": sum,
    "min": min,
    "max": max,
}


@dataclass
class StepMetrics:
    """The metrics of one step on one process; `reduce` turns them into the logged values."""

    values: dict[str, tuple[float, Reduction]] = field(default_factory=dict)
    # name -> whether its standard deviation is logged too (see `add_moments`)
    moments: dict[str, bool] = field(default_factory=dict)

    def add(self, name: str, value: float, reduction: Reduction = "mean") -> None:
        self.values[name] = (float(value), reduction)

    def add_moments(self, name: str, values: torch.Tensor, *, spread: bool = True) -> None:
        """Log `name/mean` of `values` over every process (and `name/std`, `name/min`, `name/max` when `spread`)."""
        values = values.detach().double().cpu()
        self.add(f"{name}/count", values.numel(), "sum")
        self.add(f"{name}/sum", values.sum().item(), "sum")
        if spread:
            self.add(f"{name}/sum_sq", values.square().sum().item(), "sum")
            self.add(f"{name}/min", values.min().item() if values.numel() else float("inf"), "min")
            self.add(f"{name}/max", values.max().item() if values.numel() else float("-inf"), "max")
        self.moments[name] = spread

    def reduce(self, gather: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict[str, float]:
        """Combine every process's values in one collective (`gather` stacks each process's row; every process must
        have the same names), then turn moments into means and standard deviations."""
        names = sorted(self.values)
        local = torch.tensor([self.values[name][0] for name in names], dtype=torch.float64, device=device)
        columns = zip(*gather(local[None]).cpu().tolist(), strict=True)  # one column per name
        reduced = {
            name: float(_REDUCE[self.values[name][1]](column)) for name, column in zip(names, columns, strict=True)
        }
        for name, spread in self.moments.items():
            count, total = reduced.pop(f"{name}/count"), reduced.pop(f"{name}/sum")
            reduced[f"{name}/mean"] = total / count if count else 0.0
            if spread:
                square = reduced.pop(f"{name}/sum_sq")
                variance = (square - total * total / count) / (count - 1) if count > 1 else 0.0
                reduced[f"{name}/std"] = max(variance, 0.0) ** 0.5
        return reduced
