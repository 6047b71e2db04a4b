"""The one home of rollout persistence: shards written as work goes, resumed after a crash, merged at the end.

Work is cut into batches in a canonical order that does not depend on the number of processes. Each finished
batch is saved as one shard with `datasets`, written to a temporary folder and renamed into place, so a shard on
disk is always complete. A restarted run skips the batches whose shards exist and recomputes the rest; since every
row depends only on its own seed and its batch, the merged dataset equals the one an uninterrupted run writes.
"""

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_from_disk

from .schema import ROLLOUT_FEATURES


SHARDS_DIRNAME = "shards"
DATASET_DIRNAME = "dataset"
MANIFEST_NAME = "rollout_manifest.json"


class RolloutWriter:
    """Persist rollout batches under `output_dir` and merge them into `output_dir/dataset`."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.shard_dir = self.output_dir / SHARDS_DIRNAME
        self.dataset_dir = self.output_dir / DATASET_DIRNAME

    @property
    def manifest_path(self) -> Path:
        return self.output_dir / MANIFEST_NAME

    def check_manifest(self, manifest: Mapping[str, Any], write: bool = True) -> None:
        """Check that a resumed run has the settings the existing shards were written with; record them if new.

        Every process checks (so all of them fail together), only the one given `write=True` records.

        Shards written under other settings (prompts, seeds, batch size, judge, ...) must never be mixed with new ones:
        the merged dataset would silently differ from the one a single run writes.

        Raises:
            ValueError: naming the settings that differ from those the existing shards were written with.
        """
        manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as they come back from the file
        if self.manifest_path.is_file():
            previous = json.loads(self.manifest_path.read_text())
            if previous != manifest:
                differ = _differences(previous, manifest)
                raise ValueError(
                    f"{self.output_dir} holds rollouts written with other settings ({'; '.join(differ)}); "
                    "resume with the same settings or choose another rollout_dir"
                )
            return
        if self.completed_batches():
            raise ValueError(
                f"{self.shard_dir} holds shards but no {MANIFEST_NAME}: cannot tell which settings wrote them; "
                "choose another rollout_dir"
            )
        if not write:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.output_dir / f".tmp-{MANIFEST_NAME}"
        temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        temporary.replace(self.manifest_path)

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


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    differ = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differ += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differ.append(f"{prefix}{key}: {a!r} then, {b!r} now")
    return differ
