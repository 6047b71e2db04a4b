"""The one home of rollout persistence: shards written as work goes, resumed after a crash, merged at the end.

Work is cut into batches in a canonical order that does not depend on the number of processes. Each finished
batch is saved as one shard with `datasets`, written to a temporary folder and renamed into place, so a shard on
disk is always complete. A restarted run skips the batches whose shards exist and recomputes the rest; since every
row depends only on its own seed and its batch, the merged dataset equals the one an uninterrupted run writes.

`write_atomically` and `check_manifest` are the same guarantees for any resumable output (`trl-srum eval` uses them).
"""

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
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

        See `check_manifest`; every process checks (so all of them fail together), only the one given `write=True`
        records.
        """
        check_manifest(
            self.manifest_path, manifest, results=self.shard_dir if self.completed_batches() else None, write=write
        )

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
        shard = Dataset.from_list([dict(row) for row in rows], features=ROLLOUT_FEATURES)
        write_atomically(self._shard_path(batch_index), lambda temporary: shard.save_to_disk(str(temporary)))

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
        write_atomically(self.dataset_dir, lambda temporary: merged.save_to_disk(str(temporary)))
        return load_from_disk(str(self.dataset_dir))


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write a file or folder through `write(temporary)`, then rename it into place at `path`.

    A crash leaves either the whole new `path` or none of it (a leftover temporary is cleared by the next attempt).
    A folder already at `path` is replaced; a file is replaced in one step.
    """
    temporary = path.with_name(f".tmp-{path.name}")
    _remove(temporary)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(temporary)
    if path.is_dir():
        shutil.rmtree(path)
    temporary.replace(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def check_manifest(path: Path, manifest: Mapping[str, Any], *, results: Path | None, write: bool = True) -> None:
    """Check that resumed work has the settings of the results already on disk; record the settings if new.

    Results written under other settings (prompts, seeds, batch size, judge, ...) must never be mixed with new ones:
    the merged output would silently differ from the one a single uninterrupted run writes.

    Args:
        path: the manifest file.
        manifest: everything the results depend on (JSON-compatible).
        results: the folder of existing results, or None when there are none yet.
        write: record a new manifest (give it to one process only).

    Raises:
        ValueError: naming the settings that differ from those the existing results were written with, or when
            results exist without a manifest.
    """
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as they come back from the file
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != manifest:
            differ = _differences(previous, manifest)
            raise ValueError(
                f"{path.parent} holds results written with other settings ({'; '.join(differ)}); "
                "resume with the same settings or choose another output folder"
            )
        return
    if results is not None:
        raise ValueError(
            f"{results} holds {results.name} but no {path.name}: cannot tell which settings wrote them; "
            "choose another output folder"
        )
    if write:
        write_atomically(path, lambda temporary: temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True)))


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    differ = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differ += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differ.append(f"{prefix}{key}: {a!r} then, {b!r} now")
    return differ
