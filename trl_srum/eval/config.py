import json
from dataclasses import dataclass, field
from typing import Any


AGGREGATIONS: tuple[str, ...] = ("exclude_missing", "official")


@dataclass
class EvalConfig:
    r"""
    Configuration of `trl-srum eval`: draw images from a model (or read a folder of them), judge them with a protocol,
    and aggregate the judgements the way a paper's table does.

    Parameters:
        > Parameters that choose what is measured

        eval_dir (`str`, *optional*, defaults to `"eval"`):
            Output folder: `images/` (when the model draws them), `judgements/`, `results.json`, `results.md`,
            `per_prompt.csv`, `scores.jsonl` and `grids/`. A killed run resumes from what is there.
        protocol (`str`, *optional*, defaults to `"compbench-vlm"`):
            `"compbench-vlm"` (the SRUM paper's T2I-CompBench protocol: a VLM judge scores 0-100), `"geneval"`
            (GenEval's rules on a zero-shot detector's objects) or `"shapes"` (the shapes world's exact oracle). See
            docs/evaluation.md.
        prompts (`str`, *optional*):
            Where the prompts are: a file (`.json` list of `{"Question", "Category", "Question_id"}` as T2I-CompBench
            releases them, `.jsonl`, `.txt`; for `geneval`, GenEval's `evaluation_metadata.jsonl`), a folder written
            by `Dataset.save_to_disk`, or the name of a Hub dataset. Not needed for `shapes` (held-out prompts).
        prompts_split (`str`, *optional*, defaults to `"train"`):
            Split of a Hub dataset named by `prompts`.
        max_prompts (`int`, *optional*):
            Use only the first this many prompts.
        prompts_per_category (`int`, *optional*, defaults to `16`):
            For a protocol with prompts of its own (the shapes world's held-out prompts) when `prompts` is not given:
            this many per category (all of them where there are fewer).

        > Parameters that control the images

        images_dir (`str`, *optional*):
            Judge the images in this folder (made by any generator; layout in docs/evaluation.md) instead of drawing
            them; no model is loaded.
        num_images (`int`, *optional*, defaults to `4`):
            Images per prompt (the SRUM evaluation drew 1; more gives a mean with a smaller error).
        eval_seed (`int`, *optional*, defaults to `0`):
            Base seed; image `k` of prompt `p` is drawn from a seed derived from (base seed, `p`, `k`) only, so two
            models evaluated with the same base seed start from the same noise.
        image_width (`int`, *optional*, defaults to `1024`) and image_height (`int`, *optional*, defaults to `1024`):
            Size of the drawn images.
        think (`bool`, *optional*, defaults to `False`):
            Plan in text before drawing (the paper's "CoT" rows).
        generation_kwargs (`dict`, *optional*):
            The model's own sampler settings (e.g. BAGEL: `num_timesteps`, `timestep_shift`, `cfg_text_scale`).
        generation_batch_size (`int`, *optional*, defaults to `4`):
            Images drawn together; also the unit a resumed run may redo.

        > Parameters of the judges

        judge_model (`str`, *optional*, defaults to `"Qwen/Qwen2.5-VL-7B-Instruct"`):
            `compbench-vlm`: the VLM judge, any image-text-to-text model of transformers (the paper used Qwen2.5-VL,
            7B by default, 32B in its script). Written into the results: numbers from different judges do not compare.
        judge_dtype (`str`, *optional*, defaults to `"auto"`):
            Weights dtype of the judge models (`"auto"`, `"bfloat16"`, `"float32"`, ...).
        judge_batch_size (`int`, *optional*, defaults to `8`):
            Images judged together; also the unit a resumed run may redo.
        judge_max_new_tokens (`int`, *optional*, defaults to `512`):
            Token budget of a VLM judgement (the paper's: 512).
        judge_retries (`int`, *optional*, defaults to `2`):
            Extra attempts, sampled, for a judgement that cannot be parsed; after them it is recorded as missing.
        judge_retry_temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of the retries.
        aggregation (`str`, *optional*, defaults to `"exclude_missing"`):
            `compbench-vlm`: `"exclude_missing"` leaves judgements that never parsed out of every mean and reports
            them; `"official"` counts them as -1, as the SRUM evaluation script did (to reproduce published numbers).
        detector_model (`str`, *optional*, defaults to `"google/owlv2-base-patch16-ensemble"`):
            `geneval`: a zero-shot object detector of transformers (OWLv2, OWL-ViT, Grounding DINO, ...).
        clip_model (`str`, *optional*, defaults to `"openai/clip-vit-large-patch14"`):
            `geneval`: the CLIP model that names an object's colour (GenEval's is ViT-L/14).
        detection_threshold (`float`, *optional*, defaults to `0.3`):
            `geneval`: minimum detector score of an object (GenEval's value for its own detector).
        counting_threshold (`float`, *optional*):
            `geneval`: minimum score on counting prompts (GenEval uses 0.9 with Mask2Former, whose scores run
            higher than a zero-shot detector's); None uses `detection_threshold`.
        nms_iou (`float`, *optional*, defaults to `0.5`):
            `geneval`: boxes of one class overlapping more than this are one object (zero-shot detectors repeat
            boxes; GenEval's detector needs no such step). 1 turns it off.
        max_objects (`int`, *optional*, defaults to `16`):
            `geneval`: at most this many objects of one class, the most confident first (GenEval's limit).
        position_threshold (`float`, *optional*, defaults to `0.1`):
            `geneval`: the margin of GenEval's relative-position rule.

        > Parameters that control what a person sees

        grid_prompts (`int`, *optional*, defaults to `8`):
            Prompts per category drawn into `grids/<category>.png`, one row each with all their images.
        grid_thumbnail (`int`, *optional*, defaults to `256`):
            Side in pixels of each image in a grid.
    """

    eval_dir: str = field(default="eval", metadata={"help": "Output folder (resumable)."})
    protocol: str = field(default="compbench-vlm", metadata={"help": "Evaluation protocol."})
    prompts: str | None = field(default=None, metadata={"help": "Prompt file, saved dataset folder or Hub dataset."})
    prompts_split: str = field(default="train", metadata={"help": "Split of a Hub prompt dataset."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    prompts_per_category: int = field(default=16, metadata={"help": "Prompts per category of a protocol's own set."})

    images_dir: str | None = field(default=None, metadata={"help": "Judge this folder of images instead of drawing."})
    num_images: int = field(default=4, metadata={"help": "Images per prompt."})
    eval_seed: int = field(default=0, metadata={"help": "Base seed of the images."})
    image_width: int = field(default=1024, metadata={"help": "Width of drawn images."})
    image_height: int = field(default=1024, metadata={"help": "Height of drawn images."})
    think: bool = field(default=False, metadata={"help": "Plan in text before drawing."})
    generation_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "The model's sampler settings, e.g. {'num_timesteps': 50}."}
    )
    generation_batch_size: int = field(default=4, metadata={"help": "Images drawn together."})

    judge_model: str = field(default="Qwen/Qwen2.5-VL-7B-Instruct", metadata={"help": "VLM judge (compbench-vlm)."})
    judge_dtype: str = field(default="auto", metadata={"help": "Dtype of the judge models."})
    judge_batch_size: int = field(default=8, metadata={"help": "Images judged together."})
    judge_max_new_tokens: int = field(default=512, metadata={"help": "Token budget of a VLM judgement."})
    judge_retries: int = field(default=2, metadata={"help": "Sampled retries of unparsable judgements."})
    judge_retry_temperature: float = field(default=0.7, metadata={"help": "Temperature of the retries."})
    aggregation: str = field(
        default="exclude_missing",
        metadata={"help": "How missing judgements count (compbench-vlm).", "choices": list(AGGREGATIONS)},
    )
    detector_model: str = field(
        default="google/owlv2-base-patch16-ensemble", metadata={"help": "Zero-shot object detector (geneval)."}
    )
    clip_model: str = field(default="openai/clip-vit-large-patch14", metadata={"help": "Colour classifier (geneval)."})
    detection_threshold: float = field(default=0.3, metadata={"help": "Minimum detector score (geneval)."})
    counting_threshold: float | None = field(
        default=None, metadata={"help": "Minimum score on counting prompts (geneval; None: detection_threshold)."}
    )
    nms_iou: float = field(default=0.5, metadata={"help": "IoU above which boxes of a class merge (geneval)."})
    max_objects: int = field(default=16, metadata={"help": "Objects kept per class (geneval)."})
    position_threshold: float = field(default=0.1, metadata={"help": "Margin of the position rule (geneval)."})

    grid_prompts: int = field(default=8, metadata={"help": "Prompts per category in the image grids."})
    grid_thumbnail: int = field(default=256, metadata={"help": "Side of each image in a grid, in pixels."})

    def __post_init__(self):
        if isinstance(self.generation_kwargs, str):  # given as JSON on the command line
            self.generation_kwargs = json.loads(self.generation_kwargs)
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r} is not one of {AGGREGATIONS}")
        for name in ("num_images", "generation_batch_size", "judge_batch_size", "max_objects", "grid_thumbnail"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.judge_retries < 0 or self.grid_prompts < 0 or self.prompts_per_category < 1:
            raise ValueError("judge_retries and grid_prompts must be >= 0, prompts_per_category >= 1")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {self.max_prompts}")

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image_width, self.image_height
