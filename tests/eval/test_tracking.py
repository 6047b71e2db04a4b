"""The `report_to` hook: an evaluation's numbers and grids logged to tensorboard through an accelerate tracker."""

import numpy as np
import pytest
from accelerate.tracking import TensorBoardTracker
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trl_srum.eval import log_results


def test_numbers_and_grids_reach_a_tensorboard_event_file(reference, tmp_path):
    tracker = TensorBoardTracker("round-3", tmp_path)
    tracker.start()
    logged = log_results(reference, [tracker], step=3)
    tracker.finish()

    events = EventAccumulator(str(tmp_path / "round-3"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    assert set(scalars) == set(logged) == {
        "eval/shapes/overall", "eval/shapes/missing",
        *(f"eval/shapes/{category}" for category in reference.aggregate.categories),
    }  # fmt: skip
    overall = scalars["eval/shapes/overall"]
    assert [(e.step, pytest.approx(e.value)) for e in overall] == [(3, reference.overall)]
    images = set(events.Tags()["images"])
    assert images == {f"eval/shapes/grid/{category}" for category in reference.aggregate.categories}
    grid = events.Images("eval/shapes/grid/counting")[0]
    assert grid.step == 3 and (grid.width, grid.height) == (134, 134)
    assert np.isfinite(list(logged.values())).all()


class NumbersOnly:
    """A tracker without `log_images`."""

    name = "numbers-only"

    def __init__(self):
        self.logged = []

    def log(self, values, step=None):
        self.logged.append((step, values))


def test_a_tracker_without_images_gets_the_numbers(reference):
    tracker = NumbersOnly()
    values = log_results(reference, [tracker], step=1, prefix="round")
    assert tracker.logged == [(1, values)] and "round/shapes/overall" in values
