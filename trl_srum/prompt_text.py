"""The text conventions a unified model shares with every part of SRUM that talks to it.

- Prompt styles: `"detailed"` for real models, `"concise"` (fixed lower-case words, no punctuation) for tiny ones
  trained from scratch with a word-level tokenizer.
- Images and boxes in words: every prompt states the image size and gives boxes in whole pixels, with (0, 0) at the
  top-left corner (the model may look at a resized copy of the image).
- Native grounding: how a model is asked for the boxes of a phrase (`grounding_prompt`), the answer that prompt
  expects (`grounding_answer`) and how boxes written as text are read back (`parse_boxes`).
- Where an answer is read from (`final_answer_text`, used by every parser of a model's answers):
    Only the text after the last `</think>` (or `</thinking>`). With an opening `<think>` but no closing tag the
    reasoning was cut short, so the text from the last line that starts a final answer ("Final answer", "Answer:",
    "Final score", ...) is used when there is one, and the whole text otherwise. Inside that, the last
    `<answer>...</answer>` block is used when there is one.

The judge's own questions and their parsers build on these (`trl_srum.judge`); models implement grounding with them.
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from collections.abc import Sequence
from typing import Literal


Style = Literal["detailed", "concise"]

# Every pattern below is linear in the input (no catastrophic backtracking on long junk strings).
_FLAGS = re.IGNORECASE | re.ASCII

_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2212\ufe63\uff0d", "-") | {"\u2044": "/"})
_FENCE = re.compile(r"```[a-z]*", _FLAGS)

_THINK_END = re.compile(r"</think(?:ing)?>", _FLAGS)
_THINK_START = re.compile(r"<think(?:ing)?>", _FLAGS)
_ANSWER_OPEN = re.compile(r"<answer>", _FLAGS)
_ANSWER_CLOSE = re.compile(r"</answer>", _FLAGS)
_FINAL_MARKER = re.compile(
    r"^[^\S\n]{0,8}[#>+-]{0,6}[^\S\n]{0,4}"
    r"(?:final[^\S\n]{1,3}(?:answer|score|output|verdict|evaluation|assessment|result)|answer)(?![a-z])",
    _FLAGS | re.MULTILINE,
)

_COORD = r"[+-]?[0-9]+(?:\.[0-9]+)?"
_BOX = re.compile(
    # two corners: (x1, y1), (x2, y2) -- also inside <box>...</box> or <|box_start|>...<|box_end|>
    rf"[(\[]\s*(?P<p1>{_COORD})\s*,\s*(?P<p2>{_COORD})\s*[)\]]\s*,?\s*"
    rf"[(\[]\s*(?P<p3>{_COORD})\s*,\s*(?P<p4>{_COORD})\s*[)\]]"
    # one list: [x1, y1, x2, y2] or (x1, y1, x2, y2)
    rf"|[(\[]\s*(?P<l1>{_COORD})\s*,\s*(?P<l2>{_COORD})\s*,\s*(?P<l3>{_COORD})\s*,\s*(?P<l4>{_COORD})\s*[)\]]"
    # a word: box x1 y1 x2 y2 (the concise style) or <box>x1 y1 x2 y2</box>
    rf"|\bbox\b[^\S\n]{{0,3}}[:=>]?[^\S\n]{{0,3}}(?P<w1>{_COORD})[\s,]+(?P<w2>{_COORD})[\s,]+"
    rf"(?P<w3>{_COORD})[\s,]+(?P<w4>{_COORD})",
    _FLAGS,
)

PIXEL_COORDINATES = "with (0, 0) at the top-left corner, x growing to the right and y growing downwards"
# The words a concise grounding prompt and its answer use, besides the phrase and numbers.
GROUNDING_WORDS: tuple[str, ...] = ("find", "size", "phrase", "box", "none")


# ------------------------------------------------------------------------------------------------- images in words
def is_concise(style: Style) -> bool:
    """Whether `style` is `"concise"`; raises on an unknown style."""
    if style not in ("detailed", "concise"):
        raise ValueError(f"style must be 'detailed' or 'concise', got {style!r}")
    return style == "concise"


def checked_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """`(width, height)` in whole pixels; raises unless both are positive."""
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image_size must be a positive (width, height), got {image_size}")
    return round(width), round(height)


def rounded_box(box: Sequence[float]) -> tuple[int, int, int, int]:
    """A box's corners rounded to whole pixels, as prompts write them."""
    if len(box) != 4:
        raise ValueError(f"a box is (x1, y1, x2, y2), got {box}")
    x1, y1, x2, y2 = (round(float(c)) for c in box)
    return x1, y1, x2, y2


def box_text(box: Sequence[float], concise: bool) -> str:
    """A box as a prompt writes it: `x1 y1 x2 y2` (concise) or `[x1, y1, x2, y2]`."""
    coords = rounded_box(box)
    return " ".join(map(str, coords)) if concise else "[" + ", ".join(map(str, coords)) + "]"


def size_text(image_size: tuple[int, int]) -> str:
    """An image size in words, e.g. "64 x 64 pixels (width x height)"."""
    width, height = checked_size(image_size)
    return f"{width} x {height} pixels (width x height)"


# ---------------------------------------------------------------------------------------------------------- answers
def normalize_answer(text: str) -> str:
    """A model's answer as the parsers read it: unicode folded, dashes made ASCII, line ends unified, markdown emphasis,
    backticks and code fences removed."""
    # NFKC folds full-width digits and colons and odd spaces into ASCII; emphasis and fences carry no meaning here.
    text = unicodedata.normalize("NFKC", text).translate(_DASHES)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _FENCE.sub("", text).replace("*", "").replace("`", "").replace("__", "")


def last_match(pattern: re.Pattern[str], text: str, pos: int = 0) -> re.Match[str] | None:
    """The last match of `pattern` in `text` from `pos` on, if any."""
    last = deque(pattern.finditer(text, pos), maxlen=1)
    return last[0] if last else None


def _final_answer(text: str) -> str:
    """The part of a normalised answer that holds the final answer (see "Where an answer is read from" above)."""
    think_end = last_match(_THINK_END, text)
    if think_end is not None:
        text = text[think_end.end() :]
    else:
        think_start = _THINK_START.search(text)
        if think_start is not None:
            marker = last_match(_FINAL_MARKER, text, think_start.end())
            if marker is not None:
                text = text[marker.start() :]
    answer_open = last_match(_ANSWER_OPEN, text)
    if answer_open is not None:
        answer_close = _ANSWER_CLOSE.search(text, answer_open.end())
        text = text[answer_open.end() : answer_close.start() if answer_close else len(text)]
    return text


def final_answer_text(text: str) -> str:
    """The normalised part of a model's answer that holds its final answer (see "Where an answer is read from")."""
    return _final_answer(normalize_answer(text))


def parse_boxes(text: str, image_size: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    """Boxes a model wrote as text, in the image's pixels, clipped to the image.

    Reads `[x1, y1, x2, y2]` and `(x1, y1, x2, y2)` lists (also nested in JSON), corner pairs `(x1, y1), (x2, y2)`
    (as in `<box>(x1,y1),(x2,y2)</box>` and `<|box_start|>...<|box_end|>`), and `box x1 y1 x2 y2` (the concise
    style), in order of appearance. Coordinates are taken as pixels. A box whose clipped width or height is under
    one pixel is dropped: that covers inverted and empty boxes, boxes outside the image, and boxes in normalised
    [0, 1] coordinates, which would otherwise be silently read as a sub-pixel box in the corner.

    Args:
        text (`str`):
            The model's answer.
        image_size (`tuple[int, int]`):
            `(width, height)` of the image in pixels.

    Returns:
        `list` of `(x1, y1, x2, y2)` with `0 <= x1 < x2 <= width` and `0 <= y1 < y2 <= height`.
    """
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image_size must be a positive (width, height), got {image_size}")
    boxes = []
    for match in _BOX.finditer(final_answer_text(text)):
        coords = [float(c) for c in match.groups() if c is not None]
        x1, x2 = (min(max(c, 0.0), float(width)) for c in coords[0::2])
        y1, y2 = (min(max(c, 0.0), float(height)) for c in coords[1::2])
        if x2 - x1 >= 1.0 and y2 - y1 >= 1.0:
            boxes.append((x1, y1, x2, y2))
    return boxes


# -------------------------------------------------------------------------------------------------------- grounding
def grounding_prompt(phrase: str, image_size: tuple[int, int], *, style: Style = "detailed") -> str:
    """Ask for the box of every instance of `phrase`, in the format [`parse_boxes`] reads.

    Expected answer: one `[x1, y1, x2, y2]` line per instance (detailed) or `box x1 y1 x2 y2 ...` (concise), and
    `none` when there is no instance; see [`grounding_answer`].
    """
    width, height = checked_size(image_size)
    if is_concise(style):
        return f"find size {width} {height} phrase {phrase}"
    return (
        f'Find every instance of "{phrase}" in this image of {size_text(image_size)}. '
        f"Give each one as a bounding box [x1, y1, x2, y2] in pixels, {PIXEL_COORDINATES}: (x1, y1) is the "
        f"top-left corner of the box and (x2, y2) its bottom-right corner, so 0 <= x1 < x2 <= {width} and "
        f"0 <= y1 < y2 <= {height}. Write one box per line and nothing else. If there is no such object, write none."
    )


def grounding_answer(boxes: Sequence[Sequence[float]], *, style: Style = "detailed") -> str:
    """The answer [`grounding_prompt`] expects: the boxes rounded to whole pixels, or `none`."""
    concise = is_concise(style)
    if not boxes:
        return "none"
    if concise:
        return " ".join(f"box {box_text(box, True)}" for box in boxes)
    return "\n".join(box_text(box, False) for box in boxes)
