"""The one home of rollout persistence: shards written as work goes, resumed after a crash, merged at the end.

Work is cut into batches in a canonical order that does not depend on the number of processes. Each finished
batch is saved as one shard with `datasets`, written to a temporary folder and renamed into place, so a shard on
disk is always complete. A restarted run skips the batches whose shards exist and recomputes the rest; since every
row depends only on its own seed and its batch, the merged dataset equals the one an uninterrupted run writes.
"""

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_from_disk

from .schema import ROLLOUT_FEATURES


SHARDS_DIRNAME = "shards"
DATASET_DIRNAME = "dataset"


class RolloutWriter:
    """Persist rollout batches under `output_dir` and merge them into `output_dir/dataset`."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.shard_dir = self.output_dir / SHARDS_DIRNAME
        self.dataset_dir = self.output_dir / DATASET_DIRNAME

    def _shard_path(self, batch_index: int) -> Path:
        return self.shard_dir / f"batch-{batch_index:07d}"

    def completed_batches(self) -> set[int]:
        """Indices of the batches whose shards are complete on disk."""
        if not self.shard_dir.is_dir():
            return set()
        names = (path.name.removeprefix("batch-") for path in self.shard_dir.glob("batch-*"))
        return {int(name) for name in names if name.isdigit()}

    def write_batch(self, batch_index: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """Save one batch atomically: a crash leaves either the whole shard or none of it."""
        final = self._shard_path(batch_index)
        temporary = self.shard_dir / f".tmp-{final.name}"
        if temporary.exists():
            shutil.rmtree(temporary)
        Dataset.from_list([dict(row) for row in rows], features=ROLLOUT_FEATURES).save_to_disk(str(temporary))
        temporary.rename(final)

    def merge(self, num_batches: int) -> Dataset:
        """Concatenate every shard in batch order into `output_dir/dataset` and return it.

        Raises:
            RuntimeError: naming the missing batches when the run is incomplete.
        """
        missing = sorted(set(range(num_batches)) - self.completed_batches())
        if missing:
            raise RuntimeError(f"cannot merge rollouts in {self.output_dir}: batches {missing[:10]} are missing")
        shards = [load_from_disk(str(self._shard_path(index))) for index in range(num_batches)]
        merged = concatenate_datasets(shards) if shards else Dataset.from_list([], features=ROLLOUT_FEATURES)
        temporary = self.output_dir / f".tmp-{DATASET_DIRNAME}"
        if temporary.exists():
            shutil.rmtree(temporary)
        merged.save_to_disk(str(temporary))
        if self.dataset_dir.exists():
            shutil.rmtree(self.dataset_dir)
        temporary.rename(self.dataset_dir)
        return load_from_disk(str(self.dataset_dir))
