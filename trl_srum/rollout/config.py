import json
from dataclasses import dataclass, field
from typing import Any


PROPOSERS: tuple[str, ...] = ("sam", "sam_hf", "grounding", "components", "none")
JUDGE_MODES: tuple[str, ...] = ("text", "prob")
JUDGE_STYLES: tuple[str, ...] = ("detailed", "concise")


@dataclass
class RolloutConfig:
    r"""
    Configuration of stage 1: self-generated candidates, region proposals and the model's own judgements.

    Parameters:
        > Parameters that control the candidates

        rollout_dir (`str`, *optional*, defaults to `"rollouts"`):
            Where shards, the merged dataset (`<rollout_dir>/dataset`), the gallery and the summary go.
        prompts_file (`str`, *optional*):
            Prompts: a JSON list of `{"Question", "Category", "Question_id"}` (T2I-CompBench as released), a `.jsonl`
            of `{"prompt", "category"?, "prompt_id"?}`, or a `.txt` with one prompt per line.
        num_prompts (`int`, *optional*):
            Use only the first this many prompts.
        prompt_source (`str`, *optional*):
            Instead of `prompts_file`, the prompts of a source a plug-in registered (`trl_srum.plugins`), drawn with
            `rollout_seed`: e.g. `"shapes"`, the shapes world's training prompts (held-out combinations never).
        prompt_source_size (`int`, *optional*, defaults to `0`):
            How many prompts the source draws; for `"shapes"`, per category.
        num_candidates (`int`, *optional*, defaults to `1`):
            Images per prompt (1 as released; more enables best-of-N statistics).
        rollout_seed (`int`, *optional*, defaults to `0`):
            Base seed; candidate `k` of prompt `p` is drawn with a seed derived from (base seed, `p`, `k`).
        image_width (`int`, *optional*, defaults to `1024`) and image_height (`int`, *optional*, defaults to `1024`):
            Size of the generated images.
        think (`bool`, *optional*, defaults to `False`):
            Generate a planning text before each image (the released data used think mode).
        generation_kwargs (`dict`, *optional*):
            The model's own sampler settings (e.g. BAGEL: `num_timesteps`, `timestep_shift`, `cfg_text_scale`).
        rollout_batch_size (`int`, *optional*, defaults to `4`):
            Prompts generated together; also the unit of a shard, so resuming redoes at most one batch.

        > Parameters that control region proposals

        proposer (`str`, *optional*, defaults to `"sam"`):
            `"sam"` (segment-anything), `"sam_hf"` (transformers `SamModel`), `"grounding"` (the model's own),
            `"components"` (foreground components, for flat-coloured scenes) or `"none"` (global score only).
        sam_checkpoint (`str`, *optional*):
            Path of a segment-anything checkpoint (`"sam"`), or a transformers SAM model id/path (`"sam_hf"`).
        sam_model_type (`str`, *optional*, defaults to `"vit_h"`):
            segment-anything model type of `sam_checkpoint`.
        max_regions (`int`, *optional*, defaults to `10`):
            At most this many regions per image (the released recipe's count).
        min_region_area (`float`, *optional*, defaults to `0.002`) and max_region_area (`float`, *optional*, defaults to `0.8`):
            Drop boxes smaller / larger than these fractions of the image.
        nms_iou (`float`, *optional*, defaults to `0.7`):
            IoU above which duplicate proposals are removed.
        relevance_threshold (`float`, *optional*, defaults to `0.5`):
            Keep a proposal only if the understanding module says it is relevant to the prompt with at least this
            probability (the paper's filter; the released code has none). `0` keeps every proposal.

        > Parameters that control the self-judge

        judge_mode (`str`, *optional*, defaults to `"text"`):
            `"text"`: the model writes its judgement, which is parsed. `"prob"`: the expected score under the
            model's token probabilities over a fixed answer scale, in one forward per question.
        judge_style (`str`, *optional*, defaults to `"detailed"`):
            `"detailed"` rubric prompts for real models, `"concise"` fixed-vocabulary prompts for tiny ones.
        judge_think (`bool`, *optional*, defaults to `False`):
            Let the judge reason before answering (the released judge did).
        judge_max_new_tokens (`int`, *optional*, defaults to `512`):
            Token budget of each `text` judgement.
        judge_retries (`int`, *optional*, defaults to `2`):
            Extra `text` attempts when an answer cannot be parsed; retries *sample* (the released ones were greedy
            and repeated the same output).
        judge_retry_temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of the retries.

        > Parameters that control what a person sees

        gallery_size (`int`, *optional*, defaults to `16`):
            Rows drawn with their boxes, scores and reward map into `<rollout_dir>/gallery/`.
    """

    rollout_dir: str = field(default="rollouts", metadata={"help": "Output folder of stage 1."})
    prompts_file: str | None = field(default=None, metadata={"help": "Prompt file (.json, .jsonl or .txt)."})
    num_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    prompt_source: str | None = field(
        default=None, metadata={"help": "A registered prompt source instead of a file (e.g. 'shapes')."}
    )
    prompt_source_size: int = field(
        default=0, metadata={"help": "Prompts the source draws (for 'shapes': per category)."}
    )
    num_candidates: int = field(default=1, metadata={"help": "Images per prompt."})
    rollout_seed: int = field(default=0, metadata={"help": "Base seed of the candidates."})
    image_width: int = field(default=1024, metadata={"help": "Width of generated images."})
    image_height: int = field(default=1024, metadata={"help": "Height of generated images."})
    think: bool = field(default=False, metadata={"help": "Plan in text before drawing."})
    generation_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "The model's sampler settings, e.g. {'num_timesteps': 50}."}
    )
    rollout_batch_size: int = field(default=4, metadata={"help": "Prompts generated together (= one shard)."})

    proposer: str = field(default="sam", metadata={"help": "Region proposer.", "choices": list(PROPOSERS)})
    sam_checkpoint: str | None = field(default=None, metadata={"help": "SAM checkpoint path or model id."})
    sam_model_type: str = field(default="vit_h", metadata={"help": "segment-anything model type."})
    max_regions: int = field(default=10, metadata={"help": "Regions kept per image."})
    min_region_area: float = field(default=0.002, metadata={"help": "Minimum box area (image fraction)."})
    max_region_area: float = field(default=0.8, metadata={"help": "Maximum box area (image fraction)."})
    nms_iou: float = field(default=0.7, metadata={"help": "IoU of duplicate proposals."})
    relevance_threshold: float = field(default=0.5, metadata={"help": "Minimum P(relevant) to keep a proposal."})

    judge_mode: str = field(default="text", metadata={"help": "Judge mode.", "choices": list(JUDGE_MODES)})
    judge_style: str = field(default="detailed", metadata={"help": "Judge prompts.", "choices": list(JUDGE_STYLES)})
    judge_think: bool = field(default=False, metadata={"help": "Let the judge reason first."})
    judge_max_new_tokens: int = field(default=512, metadata={"help": "Token budget of a text judgement."})
    judge_retries: int = field(default=2, metadata={"help": "Sampled retries of unparsable judgements."})
    judge_retry_temperature: float = field(default=0.7, metadata={"help": "Temperature of the retries."})

    gallery_size: int = field(default=16, metadata={"help": "Rows drawn into the gallery."})

    def __post_init__(self):
        if isinstance(self.generation_kwargs, str):  # given as JSON on the command line
            self.generation_kwargs = json.loads(self.generation_kwargs)
        for name, allowed in (("proposer", PROPOSERS), ("judge_mode", JUDGE_MODES), ("judge_style", JUDGE_STYLES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.num_candidates < 1 or self.rollout_batch_size < 1:
            raise ValueError("num_candidates and rollout_batch_size must be >= 1")
        if self.proposer in ("sam", "sam_hf") and not self.sam_checkpoint:
            raise ValueError(f"proposer={self.proposer!r} needs sam_checkpoint")
        if not 0.0 <= self.relevance_threshold <= 1.0:
            raise ValueError(f"relevance_threshold must be in [0, 1]; got {self.relevance_threshold}")

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image_width, self.image_height
