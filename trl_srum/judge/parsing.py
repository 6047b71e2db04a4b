"""Read the self-judge's free-text answers: a global score and per-region scores, all in [-1, 1].

The judge is the model being trained, so its answers drift away from the requested format. The reference parser split
region blocks on blank lines, took the first `Score:` it saw (possibly inside leaked reasoning), missed `.5`, and
neither clamped scores nor checked region ids. These parsers accept the formats below and return `None` for a score
they cannot find instead of guessing.

Where the answer is read from
    As every answer of a model is read (`trl_srum.prompt_text.final_answer_text`): after the last `</think>`, or
    from the last "Final answer"-like line of an unfinished reasoning, and inside the last `<answer>` block.

What a score looks like
    A number after a label: `Score: 0.8`, `Rating: 0.8`, `Final answer: 0.8`, `**Score:** 0.8`, `score = .5`,
    `"score": "-0.3"`, `The score is 0.7`, `### Score` with the number on the next line, `| Score | 0.8 |`, and
    `score 0.5` at the start of a line (the concise style); a label preceded by "confidence" is no score. When the
    answer holds no label at all, an answer that is nothing but a number is read as that number. Markdown emphasis, code fences and unicode minus signs and dashes (`−`, `–`, `‑`, `—`) are normalised
    first; `+0.7` and `.5` are numbers. `0,5` is read as 0.5 (a decimal comma) when the comma is followed by digits
    and not by another list item: a score label is never followed by a list, and `Score: 0,5` means one half in many
    locales.

Other scales are rejected
    `8/10`, `80%` and `4 out of 5` give `None`: the neutral point of the judge's private scale is unknown (is 5/10
    neutral or mildly good?), so any mapping onto [-1, 1] would be a guess. A plain number outside [-1, 1]
    (`Score: 8`) is clamped, as the reward needs, and `ScoreParse.clamped` reports it so callers can count it.

Repeats: the last occurrence wins
    For the global score and for each region. A model that revises itself writes the revision later, and reasoning
    that leaks into the answer comes before the answer. The global parser prefers the last score whose label names the
    whole image ("Overall score", "Layout score", `global_score`, ...) over component scores written after it.

Regions
    Region ids are 1-based; ids outside 1..num_regions are ignored, missing regions are `None`, blocks may come in any
    order and be separated by `---`, blank lines or nothing. Accepted: `Region 2: -0.5` lines (also with `(label)`,
    `[box]`, `| Score: x`), blocks that start with a `Region ID: 2` / `### Region 2` line and contain a `Score:` line,
    markdown tables with a region and a score column, JSON objects with an id and a score key
    (`{"regions": [{"id": 1, "score": 0.3}]}`) or keyed by region (`{"1": 0.3}`, `{"region_1": 0.3}`), and, only when
    nothing else names a region, a bare list of numbers `[0.3, -0.5]` read in region order. A bare list counts only when
    every number in it lies in [-1, 1]: a list with larger numbers is far more likely a box or a count than scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..prompt_text import final_answer_text, last_match


@dataclass(frozen=True)
class ScoreParse:
    """One score read from the judge's answer.

    Args:
        value (`float`):
            The score clamped to [-1, 1]: what the reward uses.
        raw_value (`float`):
            The number as the judge wrote it.
    """

    value: float
    raw_value: float

    @property
    def clamped(self) -> bool:
        """Whether the judge wrote a number outside [-1, 1]."""
        return self.value != self.raw_value


def _score(raw: float) -> ScoreParse:
    return ScoreParse(min(1.0, max(-1.0, raw)) + 0.0, raw)  # + 0.0 turns a written "-0" into 0.0


# ---------------------------------------------------------------------------------------------------------- patterns
# Every pattern below is linear in the input: quantifiers next to each other either cannot match the same characters or
# are bounded, so long junk strings cannot make the regex engine backtrack catastrophically.
_FLAGS = re.IGNORECASE | re.ASCII

# A number as a judge writes it; a decimal comma only where no further list item follows it.
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]+|,[0-9]+(?![0-9,]|\.[0-9]))?|\.[0-9]+)"
# A suffix that puts the number on a scale of the judge's own.
_OTHER_SCALE = r"[^\S\n]{0,3}(?:%|/[^\S\n]{0,3}[0-9]|out[^\S\n]{1,3}of\b|percent\b)"
# A value is a number that is not the first item of a list such as `12, 30, 400, 500`.
_VALUE = (
    rf"[\"']?(?P<num>{_NUMBER})(?![0-9])(?P<scale>{_OTHER_SCALE})?"
    r"(?![^\S\n]{0,3},[^\S\n]{0,3}[+-]?\.?[0-9])"
)
_SEPARATOR = r"(?:[:=>|]|->|is\b|-(?=[^\S\n]))"
# "Answer: 0.7" is how a model often closes its reasoning.
_SCORE_WORD = r"(?<![a-z])(?:score|rating|answer)s?(?![a-z])"

_SCORE_LABEL = re.compile(
    rf"{_SCORE_WORD}[\"']?[^\S\n]{{0,3}}(?P<sep>{_SEPARATOR})?[^\S\n]{{0,3}}\n?[^\S\n]{{0,3}}{_VALUE}", _FLAGS
)
# Words before "score" that make it a score of the whole image rather than of one region.
_OVERALL = re.compile(r"(?:overall|global|total|layout|composition|average|mean|image)[^a-z0-9\n]{0,3}$", _FLAGS)
# Words before "score" that make it no judgement of the image at all.
_NOT_A_SCORE = re.compile(r"(?:confidence|certainty|probability)[^a-z0-9\n]{0,3}$", _FLAGS)

_REGION = re.compile(
    r"(?<![a-z])region(?:[^\S\n]{0,2}(?:_?id|no\.?|number|#)(?![a-z]))?"
    r"[^\S\n]{0,3}[#:=._\"'-]{0,3}[^\S\n]{0,3}(?P<rid>[0-9]{1,6})(?![0-9])",
    _FLAGS,
)
# What may follow a region id to make a self-contained entry: up to two `(label)` / `[box]` groups, then a separator
# and/or a score label, then the value.
_INLINE_TAIL = re.compile(
    r"[\"']?[^\S\n]{0,3}(?:[(\[][^()\[\]\n]{0,200}[)\]][^\S\n]{0,3}){0,2}"
    rf"(?:(?P<sep>{_SEPARATOR})[^\S\n]{{0,3}}(?P<label>(?:score|rating)s?[\"']?[^\S\n]{{0,3}}(?:[:=]|is\b)?[^\S\n]{{0,3}})?"
    r"|(?P<only_label>(?:score|rating)s?[\"']?[^\S\n]{0,3}(?:[:=]|is\b)?[^\S\n]{0,3}))"
    rf"{_VALUE}",
    _FLAGS,
)
# After `Region 3: 2`, a plain integer ends the entry only if nothing but punctuation follows; `Region 3: 2 apples`
# describes the region instead of scoring it.
_ENTRY_END = re.compile(r"[^\S\n]{0,3}(?:[\n,;|(-]|\.(?![0-9])|$)|[^\S\n]+region", _FLAGS)
# Decoration allowed between a line start and a region header or an unseparated score label.
_LINE_DECORATION = " \t#>*+|[({\"'-0123456789.)"
_SEGMENT_ENDS = (".", ";", ",", ":", "|", "!", "?", "---")

_OBJECT = re.compile(r"\{[^{}]*\}")
_OBJECT_ID = re.compile(
    r"[\"'](?:region(?:[ _]?(?:id|index|number))?|id|index|idx)[\"']\s*:\s*[\"']?(?:region[^\S\n]{0,3})?"
    r"(?P<rid>[0-9]{1,6})(?![0-9])",
    _FLAGS,
)
_OBJECT_SCORE = re.compile(rf"[\"'](?:score|rating|value)[\"']\s*:\s*{_VALUE}", _FLAGS)
_OBJECT_KEYED = re.compile(rf"[\"'](?P<rid>[0-9]{{1,6}})[\"']\s*:\s*{_VALUE}", _FLAGS)

_CELL_VALUE = re.compile(rf"[^\S\n]*{_VALUE}", _FLAGS)
_CELL_REGION = re.compile(r"(?:region(?:[ _]?id)?[^\S\n]{0,3}[:#]?[^\S\n]{0,3})?#?([0-9]{1,6})", _FLAGS)
_REGION_HEADER_CELL = re.compile(r"region(?:[ _]?id)?|id|#|no\.?|index|number", _FLAGS)

_PLAIN = r"[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_PLAIN_NUMBER = re.compile(_PLAIN)
_SCORE_LIST = re.compile(rf"\[\s*(?:{_PLAIN}\s*,\s*)*{_PLAIN}\s*,?\s*\]")
_BARE_SCORE = re.compile(rf"[\s\"'(\[{{]*{_VALUE}[\s\"')\]}}.]*", _FLAGS)


# ----------------------------------------------------------------------------------------------------------- helpers
def _value(match: re.Match[str]) -> ScoreParse | None:
    if match.group("scale"):
        return None
    return _score(float(match.group("num").replace(",", ".")))


def _at_segment_start(text: str, pos: int) -> bool:
    """Whether `pos` starts a line (after list or markdown decoration) or follows the end of a previous item."""
    line_start = text.rfind("\n", max(0, pos - 120), pos) + 1
    prefix = text[max(line_start, pos - 120) : pos]
    if not prefix.strip(_LINE_DECORATION):
        return True
    # Quotes, brackets, markdown and bullets may open the item, as in `, "Region 2": 0.5` or `0.9---### Region 2`.
    prefix = prefix.rstrip(" \t\"'([{#>*+")
    if prefix.endswith("---"):
        return True
    prefix = prefix.rstrip(" \t-")
    return prefix.endswith(_SEGMENT_ENDS) or prefix[-1:].isdigit()


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with the given spans replaced by spaces, keeping every position and line break."""
    if not spans:
        return text
    pieces, cursor = [], 0
    for start, end in sorted(spans):
        pieces.append(text[cursor:start])
        pieces.append(re.sub(r"[^\n]", " ", text[start:end]))
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


@dataclass(frozen=True)
class _Entry:
    pos: int
    region: int | None  # None for a score that belongs to no region
    parse: ScoreParse | None  # None for a value on another scale
    overall: bool = False


def _score_labels(text: str) -> list[_Entry]:
    entries = []
    for match in _SCORE_LABEL.finditer(text):
        # "would score 0.9 if ..." in a sentence is not an answer; an unseparated label must start an item.
        if match.group("sep") is None and not _at_segment_start(text, match.start()):
            continue
        before = text[max(0, match.start() - 20) : match.start()]
        if _NOT_A_SCORE.search(before):
            continue
        entries.append(_Entry(match.start(), None, _value(match), _OVERALL.search(before) is not None))
    return entries


def _split_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table_entries(text: str, *, with_regions: bool) -> tuple[list[_Entry], list[tuple[int, int]]]:
    """Scores in markdown tables that have a score column; returns the entries and the spans of the tables used.

    With `with_regions`, only tables with a region column count and each row gives that region's score; otherwise
    only tables without one count and each row gives a score of the whole image.
    """
    lines, offset = [], 0
    for line in text.split("\n"):
        lines.append((offset, line))
        offset += len(line) + 1
    entries: list[_Entry] = []
    spans: list[tuple[int, int]] = []
    index = 0
    while index < len(lines):
        end = index
        while end < len(lines) and lines[end][1].lstrip().startswith("|"):
            end += 1
        if end == index:
            index += 1
            continue
        table, index = lines[index:end], end
        separator = table[1][1] if len(table) > 2 else ""
        if "-" not in separator or set(separator) - set("|-: \t"):
            continue
        header = [cell.lower() for cell in _split_cells(table[0][1])]
        score_col = next((i for i, cell in enumerate(header) if "score" in cell or "rating" in cell), None)
        region_col = next((i for i, cell in enumerate(header) if _REGION_HEADER_CELL.fullmatch(cell)), None)
        if score_col is None or (region_col is not None) != with_regions:
            continue
        for row_offset, row in table[2:]:
            cells = _split_cells(row)
            if len(cells) <= max(score_col, region_col or 0):
                continue
            value = _CELL_VALUE.match(cells[score_col])
            if value is None:
                continue
            region = None
            if region_col is not None:
                region_match = _CELL_REGION.fullmatch(cells[region_col])
                if region_match is None:
                    continue
                region = int(region_match.group(1))
            entries.append(_Entry(row_offset, region, _value(value)))
        spans.append((table[0][0], table[-1][0] + len(table[-1][1])))
    return entries, spans


def _object_entries(text: str) -> tuple[list[_Entry], list[tuple[int, int]]]:
    """Region scores in flat JSON-like objects; returns the entries and the spans of the objects used."""
    entries: list[_Entry] = []
    spans: list[tuple[int, int]] = []
    for obj in _OBJECT.finditer(text):
        body = obj.group()
        region = _OBJECT_ID.search(body)
        score = last_match(_OBJECT_SCORE, body)
        if region is not None and score is not None:
            entries.append(_Entry(obj.start(), int(region.group("rid")), _value(score)))
        else:
            keyed = list(_OBJECT_KEYED.finditer(body))
            if not keyed:
                continue
            entries.extend(_Entry(obj.start() + m.start(), int(m.group("rid")), _value(m)) for m in keyed)
        spans.append(obj.span())
    return entries, spans


def _labelled_region_entries(text: str) -> list[_Entry]:
    """Region scores written as `Region i: x` entries or as blocks opened by a region header."""
    # (start, end, region, entry): a region header has entry None; a score label has region None.
    events: list[tuple[int, int, int | None, _Entry | None]] = []
    for match in _REGION.finditer(text):
        # "the cat, overlapping region 2 | Score: 0.7" talks about region 2 inside region 1's entry.
        if not _at_segment_start(text, match.start()):
            continue
        region = int(match.group("rid"))
        tail = _INLINE_TAIL.match(text, match.end())
        if tail is not None:
            number = tail.group("num")
            scored = tail.group("label") or tail.group("only_label") or not number.isdigit()
            if scored or _ENTRY_END.match(text, tail.end()):
                events.append((match.start(), tail.end(), region, _Entry(match.start(), region, _value(tail))))
                continue
        events.append((match.start(), match.end(), region, None))
    for entry in _score_labels(text):
        events.append((entry.pos, entry.pos + 1, None, entry))  # nothing else can start inside a score label
    events.sort(key=lambda event: event[0])

    entries = []
    current: int | None = None  # the region whose block we are in
    consumed = 0
    for start, end, region, entry in events:
        if start < consumed:  # part of an entry already read, e.g. the "Score: x" of "Region 1 Score: x"
            continue
        consumed = end
        if entry is None:
            current = region
        elif region is not None:
            entries.append(entry)
            current = None  # a self-contained entry opens no block
        elif entry.overall:
            current = None
        elif current is not None:
            entries.append(_Entry(entry.pos, current, entry.parse))
    return entries


# ------------------------------------------------------------------------------------------------------------ public
def parse_global_score_detailed(text: str) -> ScoreParse | None:
    """Read the global (layout) score from a judge answer, keeping the number as written.

    Args:
        text (`str`):
            The judge's full output, reasoning included.

    Returns:
        [`ScoreParse`] or `None` when the answer holds no score, or its last score is on another scale (`8/10`).
    """
    answer = final_answer_text(text)
    candidates = _score_labels(answer) + _table_entries(answer, with_regions=False)[0]
    if candidates:
        overall = [entry for entry in candidates if entry.overall]
        return max(overall or candidates, key=lambda entry: entry.pos).parse
    bare = _BARE_SCORE.fullmatch(answer)
    return _value(bare) if bare is not None else None


def parse_global_score(text: str) -> float | None:
    """The global (layout) score in [-1, 1] from a judge answer, or `None` when there is none.

    Example:

    ```python
    >>> parse_global_score("<think>maybe Score: 0.2</think>\\n**Score:** −.5\\nReason: the cat is on the wrong side")
    -0.5

    ```
    """
    parse = parse_global_score_detailed(text)
    return parse.value if parse is not None else None


def parse_region_scores_detailed(text: str, num_regions: int) -> list[ScoreParse | None]:
    """Read the score of each of regions 1..`num_regions` from a judge answer, keeping the numbers as written.

    Args:
        text (`str`):
            The judge's full output, reasoning included.
        num_regions (`int`):
            How many regions the judge was shown; they are numbered from 1.

    Returns:
        `list` of length `num_regions`: entry `i` is the [`ScoreParse`] of region `i + 1`, or `None` when the answer
        does not score that region (or scores it on another scale).
    """
    if num_regions < 0:
        raise ValueError(f"num_regions must be >= 0, got {num_regions}")
    answer = final_answer_text(text)
    object_entries, object_spans = _object_entries(answer)
    table_entries, table_spans = _table_entries(answer, with_regions=True)
    # Text already read as objects or tables is blanked so that its "score" keys are not read twice.
    entries = object_entries + table_entries + _labelled_region_entries(_blank(answer, object_spans + table_spans))

    found: dict[int, ScoreParse | None] = {}
    for entry in sorted(entries, key=lambda entry: entry.pos):
        if entry.region is not None and 1 <= entry.region <= num_regions:
            found[entry.region] = entry.parse
    if not entries:  # a bare list only counts when nothing names a region
        for match in reversed(list(_SCORE_LIST.finditer(answer))):
            values = [float(number) for number in _PLAIN_NUMBER.findall(match.group())]
            if all(-1.0 <= value <= 1.0 for value in values):
                found = {i + 1: _score(value) for i, value in enumerate(values[:num_regions])}
                break
    return [found.get(region) for region in range(1, num_regions + 1)]


def parse_region_scores(text: str, num_regions: int) -> list[float | None]:
    """The score in [-1, 1] of each of regions 1..`num_regions` from a judge answer; `None` where one is missing.

    Example:

    ```python
    >>> parse_region_scores("Region 2: 0.4\\n---\\nRegion 1: +0.9\\nRegion 7: 1\\nRegion 2: 12", 3)
    [0.9, 1.0, None]

    ```
    """
    return [parse.value if parse is not None else None for parse in parse_region_scores_detailed(text, num_regions)]
