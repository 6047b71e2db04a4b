"""Steps per second of the shapes-world pretraining: the batched pipeline against the per-sample loop it replaced.

Both loops train the same model size (LLM 128 x 4 layers, ViT 64 x 2) with the same work per step: flow matching on
32 generation latents and 12 understanding scenes, each asked six questions (the per-sample loop's settings, padded
to 192 question tokens in the batched pipeline). The per-sample loop is the recipe as it stood at revision
`PER_SAMPLE_REVISION` (read from git, so this benchmark needs the repository's history); the batched one is
`trl_srum.shapes.pretraining.train`. One thread each, run back to back in this process; step times come from the
progress bars, the first steps (warm-up, compilation) left out. The batched pipeline also prepares each chunk's data
up front: that time is reported on its own and amortised over the chunk.

Run: `python recipes/benchmarks/bench_pretrain.py` (options: `--old-steps`, `--new-steps`, `--no-compile`,
`--no-bf16`, `--threads`). Goal (issue 15): >= 5x the per-sample loop's steps/s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trl_srum.shapes import pretraining, pretraining_data


REPO_ROOT = Path(__file__).resolve().parents[2]
PER_SAMPLE_REVISION = "dcde60e"
SKIPPED_STEPS = 5


class StepClock:
    """Patches a module's `tqdm` so that every step of its training loop's progress bar (the bar titled `title`,
    iterated or updated; not the bars of data preparation) records the time."""

    def __init__(self, module, title: str) -> None:
        self.module, self.times = module, []
        clock = self

        class TimedBar(tqdm):
            iterating = False

            def __iter__(self):
                # tqdm's own iteration calls `update` now and then: those calls are not steps
                self.iterating = True
                for item in super().__iter__():
                    if self.desc == title:
                        clock.times.append(time.perf_counter())
                    yield item

            def update(self, n: int = 1):
                if self.desc == title and not self.iterating:
                    clock.times.append(time.perf_counter())
                return super().update(n)

        self.bar = TimedBar

    def __enter__(self) -> StepClock:
        self.original, self.module.tqdm = self.module.tqdm, self.bar
        return self

    def __exit__(self, *exc) -> None:
        self.module.tqdm = self.original

    def steps_per_second(self) -> float:
        times = self.times[SKIPPED_STEPS:]
        if len(times) < 3:
            raise ValueError(f"only {len(times)} timed steps: raise the number of steps")
        return (len(times) - 1) / (times[-1] - times[0])


def load_per_sample_recipe(directory: Path):
    try:
        source = subprocess.run(
            ["git", "show", f"{PER_SAMPLE_REVISION}:recipes/shapes/pretrain.py"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(f"cannot read the per-sample recipe at {PER_SAMPLE_REVISION} from git: {error}") from error
    path = directory / "pretrain_per_sample.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("pretrain_per_sample", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def per_sample_steps_per_second(steps: int, directory: Path) -> float:
    recipe = load_per_sample_recipe(directory)
    argv = sys.argv
    sys.argv = ["pretrain.py", "--steps", str(steps), "--understanding_batch", "12", "--generation_batch", "32"]
    sys.argv += ["--generation_every", "1", "--latent_bank", "256", "--threads", "1", "--match_connector_scale"]
    try:
        args = recipe.parse_args()
    finally:
        sys.argv = argv
    model = recipe.build_model(0)
    model.vae.eval().requires_grad_(False)
    with StepClock(recipe, "BAGEL (understanding + generation)") as clock:
        recipe.train_joint(model, args, random.Random(0))
    return clock.steps_per_second()


def batched_steps_per_second(steps: int, compile: bool, bf16: bool, directory: Path) -> tuple[float, float]:
    size = pretraining.ModelSize(llm_hidden=128, llm_layers=4, vit_hidden=64, vit_layers=2)
    model = pretraining.build_model(size, 0)
    model.vae.eval().requires_grad_(False)
    bank = pretraining_data.build_generation_bank(model, 512, pretraining_data.WorldMix(), 0, size.image_size)
    config = pretraining.PretrainConfig(
        steps=steps,
        steps_per_chunk=steps,
        own_samples=0,
        bank_size=512,
        warmup=10,
        generation_batch=32,
        understanding_batch=12,
        row_budget=192,
        compile=compile,
        bf16=bf16,
    )
    preparing = []
    chunk_rows = pretraining.chunk_rows

    def timed_chunk_rows(*args, **kwargs):
        start = time.perf_counter()
        rows = chunk_rows(*args, **kwargs)
        preparing.append(time.perf_counter() - start)
        return rows

    pretraining.chunk_rows = timed_chunk_rows
    try:
        with StepClock(pretraining, "pretraining") as clock:
            pretraining.train(model, bank, config, directory)
    finally:
        pretraining.chunk_rows = chunk_rows
    hot = clock.steps_per_second()
    return hot, 1 / (1 / hot + sum(preparing) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-steps", type=int, default=40)
    parser.add_argument("--new-steps", type=int, default=150)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as directory:
        old = per_sample_steps_per_second(args.old_steps, Path(directory))
        hot, amortised = batched_steps_per_second(
            args.new_steps, not args.no_compile, not args.no_bf16, Path(directory)
        )
    print(f"per-sample loop ({PER_SAMPLE_REVISION}): {old:.3f} steps/s")
    print(f"batched pipeline: hot loop {hot:.3f} steps/s, with its data preparation {amortised:.3f} steps/s")
    print(f"speed-up: {hot / old:.2f}x hot loop, {amortised / old:.2f}x with data preparation (goal >= 5x)")


if __name__ == "__main__":
    main()
