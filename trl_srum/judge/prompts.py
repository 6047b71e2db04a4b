"""Questions the model asks itself about its own images, and the answers each question expects.

Two styles:

- `"detailed"` (default), for real 7B-class unified models: plain-English instructions, a rubric, and an output format
  that [`~trl_srum.judge.parsing`] reads (`Score: <number>` / `Reason: ...`, `Region <i>: ... | Score: <number>`).
- `"concise"`, for tiny models trained from scratch with a word-level tokenizer: a short, fixed sequence of
  lower-case words separated by single spaces, with no punctuation. Apart from the user's prompt (or phrase) and
  numbers, every word of a concise prompt and of its expected answer is in [`concise_vocabulary`] (grounding prompts,
  which models answer natively, live in `trl_srum.prompt_text`; their words are included).

Numbers in the concise style are single words too. Image sizes, box coordinates and region ids are non-negative
integers (boxes lie inside the image and are rounded to whole pixels), so a word-level tokenizer needs the integers
from 0 to the largest image side. A score is one of the five words `-1 -0.5 0 0.5 1` ([`CONCISE_SCORES`]), so scoring
is a single five-way choice.

Every prompt states the image size and that boxes are pixel coordinates from the top-left corner: the reference prompts
give pixel boxes of the full-size image without its size, while the model looks at a resized copy.

Region ids are 1-based in every prompt, as [`~trl_srum.judge.parsing.parse_region_scores`] expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..prompt_text import GROUNDING_WORDS, PIXEL_COORDINATES, Style, box_text, checked_size, is_concise, size_text


# The answer scale of the token-probability judge: the model's probabilities of these answers are renormalised over
# the scale and averaged with these values (see `expected_score`). Yes/no answers are single tokens for common
# tokenizers, so summed answer log-probabilities are not biased by answer length.
PROBABILITY_SCALE: tuple[tuple[str, float], ...] = (("yes", 1.0), ("no", -1.0))

# The only scores a concise answer can contain.
CONCISE_SCORES: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)

_CONCISE_WORDS = (
    # prompts
    "layout",
    "region",
    "score",
    "match",
    "relevant",
    "size",
    "box",
    "prompt",
    # grounding prompts and their answers (`trl_srum.prompt_text`)
    *GROUNDING_WORDS,
)


def concise_vocabulary() -> list[str]:
    """Every word that concise prompts and their expected answers can contain, besides the user's text and numbers."""
    return sorted(set(_CONCISE_WORDS) | {answer for answer, _ in PROBABILITY_SCALE})


# Shared by the region judge, whose rubric is read once per region.
_REGION_RUBRIC = """\
  1             an element the prompt asks for, drawn without any visible flaw
  0.5 to 0.9    a requested element with minor flaws, or a well-drawn element that supports the scene
  -0.4 to 0.4   background or detail that neither helps nor hurts (0 means fully neutral)
  -0.9 to -0.5  an element nobody asked for that draws attention, or a requested element with serious defects \
such as distorted shapes, broken anatomy or smeared texture
  -1            content that contradicts the prompt"""

_GLOBAL_RUBRIC = """\
  1             the arrangement is exactly the one described
  0.5 to 0.9    the arrangement is right, with small inaccuracies
  -0.4 to 0.4   the arrangement neither follows nor breaks the prompt, for example because the prompt gives no \
spatial cue or the scene is generic (0 means fully neutral)
  -0.9 to -0.5  key elements are missing, misplaced, or stand in the wrong relation to each other
  -1            the arrangement is the opposite of what the prompt asks for"""


# ----------------------------------------------------------------------------------------------------------- prompts
def global_judge_prompt(prompt: str, image_size: tuple[int, int], *, style: Style = "detailed") -> str:
    """Ask for one score in [-1, 1] of the image's global layout and composition against `prompt`.

    Expected answer: `Score: <number>` then `Reason: <text>` (detailed), or `score <s>` with `s` in
    [`CONCISE_SCORES`] (concise); see [`global_answer`].
    """
    if is_concise(style):
        width, height = checked_size(image_size)
        return f"layout score size {width} {height} prompt {prompt}"
    return f"""You are reviewing an image that was generated from a text prompt.

Prompt: "{prompt}"
Image size: {size_text(image_size)}.

Judge only the global layout: which of the requested things appear, where they sit in the frame, how large they are \
compared with each other, and whether their arrangement does what the prompt asks (left or right, above or below, in \
front or behind, how many, grouped or apart). Ignore textures and small rendering mistakes; they are reviewed \
separately.

Choose one score from -1 to 1:
{_GLOBAL_RUBRIC}
Be strict: keep scores above 0.9 for layouts without any visible problem.

Answer with exactly these two lines:
Score: <number from -1 to 1>
Reason: <one or two sentences>"""


def region_judge_prompt(
    prompt: str,
    boxes: Sequence[Sequence[float]],
    image_size: tuple[int, int],
    *,
    style: Style = "detailed",
) -> str:
    """Ask for one score in [-1, 1] per region, combining its relevance to `prompt` and how well it is drawn.

    The regions are listed as `Region 1`, `Region 2`, ... with their pixel boxes, rounded to whole pixels.

    Expected answer: one `Region <i>: <what it shows> | Score: <number>` line per region (detailed), or
    `region <i> score <s> ...` (concise); see [`region_answer`].
    """
    if not boxes:
        raise ValueError("region_judge_prompt needs at least one box")
    if is_concise(style):
        width, height = checked_size(image_size)
        regions = " ".join(f"region {i} box {box_text(box, True)}" for i, box in enumerate(boxes, start=1))
        return f"region score size {width} {height} {regions} prompt {prompt}"
    regions = "\n".join(f"Region {i}: {box_text(box, False)}" for i, box in enumerate(boxes, start=1))
    return f"""You are reviewing an image that was generated from a text prompt, one region at a time.

Prompt: "{prompt}"
Image size: {size_text(image_size)}.
Boxes are [x1, y1, x2, y2] in those pixels, {PIXEL_COORDINATES}.

These {len(boxes)} regions were proposed automatically and carry no labels:
{regions}

For each region, first say in a few words what it shows, then give one score from -1 to 1 that combines how much the \
region matters for the prompt and how well it is drawn:
{_REGION_RUBRIC}
Be strict.

Answer with one line per region, in order, and nothing else:
Region <number>: <what it shows> | Score: <number from -1 to 1>"""


def region_relevance_question(
    prompt: str, box: Sequence[float], image_size: tuple[int, int], *, style: Style = "detailed"
) -> str:
    """A yes/no question: is the region inside `box` relevant to `prompt`? Used to filter box proposals.

    Answered with the words of [`PROBABILITY_SCALE`] and read with [`expected_score`] (> 0 means relevant).
    """
    if is_concise(style):
        width, height = checked_size(image_size)
        return f"relevant size {width} {height} box {box_text(box, True)} prompt {prompt}"
    return (
        f'This image of {size_text(image_size)} was generated from the prompt "{prompt}". '
        f"Look only at the box {box_text(box, False)}, in pixels {PIXEL_COORDINATES}. "
        "Does that part of the image show something the prompt mentions, or something that directly supports it? "
        "Answer yes or no."
    )


def global_probability_question(prompt: str, image_size: tuple[int, int], *, style: Style = "detailed") -> str:
    """A yes/no question for the token-probability judge: does the image's layout match `prompt`?

    Answered with the words of [`PROBABILITY_SCALE`]; [`expected_score`] turns their probabilities into a score.
    """
    if is_concise(style):
        width, height = checked_size(image_size)
        return f"layout match size {width} {height} prompt {prompt}"
    return (
        f'This image of {size_text(image_size)} was generated from the prompt "{prompt}". '
        "Does its layout, meaning which elements appear, where they are placed and how they relate in size and "
        "position, agree with the prompt? Answer yes or no."
    )


def region_probability_question(
    prompt: str, box: Sequence[float], image_size: tuple[int, int], *, style: Style = "detailed"
) -> str:
    """A yes/no question for the token-probability judge: is the region inside `box` a well-drawn, wanted element?

    Answered with the words of [`PROBABILITY_SCALE`]; [`expected_score`] turns their probabilities into a score.
    """
    if is_concise(style):
        width, height = checked_size(image_size)
        return f"region match size {width} {height} box {box_text(box, True)} prompt {prompt}"
    return (
        f'This image of {size_text(image_size)} was generated from the prompt "{prompt}". '
        f"Look only at the box {box_text(box, False)}, in pixels {PIXEL_COORDINATES}. "
        "Does it show an element the prompt asks for, clearly recognisable and free of visible defects? "
        "Answer yes or no."
    )


# ----------------------------------------------------------------------------------------------------------- answers
def _validated_score(score: float) -> float:
    if not (math.isfinite(score) and -1.0 <= score <= 1.0):
        raise ValueError(f"a score must lie in [-1, 1], got {score}")
    return float(score)


def _score_text(score: float, concise: bool) -> str:
    score = _validated_score(score)
    if concise:
        # The nearest of the five concise score words; ties go to the first listed, i.e. the lower score.
        score = min(CONCISE_SCORES, key=lambda choice: abs(choice - score))
        return {-1.0: "-1", -0.5: "-0.5", 0.0: "0", 0.5: "0.5", 1.0: "1"}[score]
    text = f"{score:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def global_answer(score: float, reason: str = "", *, style: Style = "detailed") -> str:
    """The answer [`global_judge_prompt`] expects, e.g. as a training target.

    Detailed answers write the score to two decimals; concise answers snap it to the nearest of [`CONCISE_SCORES`].
    """
    if is_concise(style):
        return f"score {_score_text(score, True)}"
    return f"Score: {_score_text(score, False)}\nReason: {reason}"


def region_answer(
    scores: Sequence[float], descriptions: Sequence[str] | None = None, *, style: Style = "detailed"
) -> str:
    """The answer [`region_judge_prompt`] expects for regions 1..len(`scores`).

    Detailed answers write `Region <i>: <description> | Score: <number>` (or `Region <i>: <number>` without
    descriptions); concise answers ignore descriptions and snap scores to [`CONCISE_SCORES`].
    """
    if descriptions is not None and len(descriptions) != len(scores):
        raise ValueError(f"got {len(descriptions)} descriptions for {len(scores)} scores")
    if is_concise(style):
        return " ".join(f"region {i} score {_score_text(s, True)}" for i, s in enumerate(scores, start=1))
    if descriptions is None:
        return "\n".join(f"Region {i}: {_score_text(s, False)}" for i, s in enumerate(scores, start=1))
    return "\n".join(
        f"Region {i}: {text} | Score: {_score_text(s, False)}"
        for i, (text, s) in enumerate(zip(descriptions, scores), start=1)
    )


# ------------------------------------------------------------------------------------------------ probability judge
def expected_score(log_probs: torch.Tensor, scale: Sequence[tuple[str, float]] = PROBABILITY_SCALE) -> torch.Tensor:
    """The expected score under the judge's answer distribution, renormalised over the answers of `scale`.

    score = Σ_a softmax(log_probs)_a · value_a, so only the relative probabilities of the scale's answers matter.

    Args:
        log_probs (`torch.Tensor` of shape `(..., len(scale))`):
            Log-probability of each answer of `scale`, in the same order (e.g. from `UnifiedModel.score_answers`).
            Must be finite.
        scale (`Sequence[tuple[str, float]]`, *optional*, defaults to `PROBABILITY_SCALE`):
            `(answer, value)` pairs with values in [-1, 1].

    Returns:
        `torch.Tensor` of shape `(...)`, float32, in [-1, 1].

    Example:

    ```python
    >>> expected_score(torch.tensor([[0.0, -1e9], [-0.7, -0.7]]))
    tensor([1., 0.])

    ```
    """
    values = [value for _, value in scale]
    if not values or not all(-1.0 <= value <= 1.0 for value in values):
        raise ValueError(f"scale values must lie in [-1, 1], got {values}")
    if log_probs.shape[-1:] != (len(values),):
        raise ValueError(
            f"log_probs must end in a dimension of size {len(values)}, got shape {tuple(log_probs.shape)}"
        )
    probs = torch.softmax(log_probs.float(), dim=-1)
    weights = torch.tensor(values, dtype=probs.dtype, device=probs.device)
    # Rounding can push a sum of probabilities times ±1 a hair past the range.
    return (probs * weights).sum(dim=-1).clamp(-1.0, 1.0)
