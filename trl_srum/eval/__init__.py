"""Evaluation of text-to-image models the way papers report them: `trl-srum eval` and its Python API.

- `evaluate_model(model, EvalConfig(...))` draws N images per prompt from a unified model and judges them;
  `evaluate_folder(EvalConfig(images_dir=...))` judges images made by any generator. Both are resumable and run
  across the processes of an accelerate launch.
- Protocols (`PROTOCOLS`, `register_protocol`): `compbench-vlm` (the SRUM paper's VLM-judged T2I-CompBench),
  `geneval` (GenEval's rules on a zero-shot detector) and `shapes` (the shapes world's exact oracle).
- `log_results` sends the numbers and image grids to tensorboard / wandb trackers; `compare_runs` gives the paired
  difference of two runs with a bootstrap interval.

See docs/evaluation.md.
"""

from .compare import Comparison, compare_runs, format_comparison
from .config import EvalConfig
from .protocols import PROTOCOLS, EvalImage, EvalProtocol, Judgement, build_protocol, register_protocol
from .report import EvalResults, read_run
from .runner import evaluate, evaluate_folder, evaluate_model
from .tracking import log_results


__all__ = [
    "PROTOCOLS",
    "Comparison",
    "EvalConfig",
    "EvalImage",
    "EvalProtocol",
    "EvalResults",
    "Judgement",
    "build_protocol",
    "compare_runs",
    "evaluate",
    "evaluate_folder",
    "evaluate_model",
    "format_comparison",
    "log_results",
    "read_run",
    "register_protocol",
]
