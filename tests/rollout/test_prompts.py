"""Prompt files: read once and checked before any image is drawn; a bad file fails at once and names itself."""

import json
import os
from pathlib import Path

import pytest

from trl_srum.rollout import RolloutConfig, config_prompts, load_prompts, resolve_prompts
from trl_srum.rollout.prompts import PromptRecord


def test_the_three_formats_give_the_same_records(tmp_path):
    json_file = tmp_path / "p.json"
    json_file.write_text(
        json.dumps(
            [
                {"Question": "a red circle", "Category": "color", "Question_id": 7},
                {"Question": "two blue squares", "Category": "numeracy", "Question_id": 9},
            ]
        )
    )
    jsonl_file = tmp_path / "p.jsonl"
    jsonl_file.write_text(
        '{"prompt": "a red circle", "category": "color", "prompt_id": "7"}\n\n'
        '{"prompt": "two blue squares", "category": "numeracy", "prompt_id": 9}\n'
    )
    assert (
        load_prompts(json_file)
        == load_prompts(jsonl_file)
        == [PromptRecord("7", "a red circle", "color"), PromptRecord("9", "two blue squares", "numeracy")]
    )
    txt_file = tmp_path / "p.txt"
    txt_file.write_text("a red circle\n\ntwo blue squares\n")
    # empty lines are kept as prompts: stage 1 records them as invalid rows
    assert load_prompts(txt_file) == [
        PromptRecord("0", "a red circle"),
        PromptRecord("1", ""),
        PromptRecord("2", "two blue squares"),
    ]
    assert resolve_prompts(str(txt_file), None, 0, 0, limit=2) == load_prompts(txt_file)[:2]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", '[{"prompt": "a red circle"}, ', "not valid JSON"),
        ("bad.json", '{"prompt": "a red circle"}', "expected a JSON list"),
        ("bad.json", '[{"text": "a red circle"}]', "entry 0 has no string 'prompt'"),
        ("bad.json", '["a", 3]', "entry 1 is neither a string nor an object"),
        ("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', ":2: not valid JSON"),
        ("dup.jsonl", '{"prompt": "a", "prompt_id": 1}\n{"prompt": "b", "prompt_id": "1"}\n', "duplicate prompt id"),
        ("empty.txt", "", "holds no prompts"),
        ("empty.json", "[]", "holds no prompts"),
        ("prompts.csv", "a,b\n", "unknown prompt file type"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "cannot read prompt file"),
    ],
)
def test_a_malformed_file_fails_naming_its_path(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message) as error:
        resolve_prompts(str(path), None, 0, 0, None)
    assert str(path) in str(error.value)


def test_a_missing_or_unreadable_file_fails_naming_its_path(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "prompts.txt"
    with pytest.raises(FileNotFoundError, match="prompt file not found") as error:
        resolve_prompts(str(missing), None, 0, 0, None)
    assert str(missing) in str(error.value)
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(FileNotFoundError, match="folder.txt"):
        resolve_prompts(str(tmp_path / "folder.txt"), None, 0, 0, None)

    unreadable = tmp_path / "locked.txt"
    unreadable.write_text("a red circle\n")
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):  # root reads anything: make the read fail as it would for anyone else
        original = Path.read_text

        def read_text(self, *args, **kwargs):
            if self == unreadable:
                raise PermissionError(13, "Permission denied", str(self))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(ValueError, match="cannot read prompt file") as error:
        resolve_prompts(str(unreadable), None, 0, 0, None)
    assert str(unreadable) in str(error.value)


def test_prompts_must_come_from_exactly_one_place(tmp_path):
    with pytest.raises(ValueError, match="needs prompts"):
        resolve_prompts(None, None, 0, 0, None)
    (tmp_path / "p.txt").write_text("a red circle\n")
    with pytest.raises(ValueError, match="not both"):
        resolve_prompts(str(tmp_path / "p.txt"), "shapes", 2, 0, None)
    with pytest.raises(ValueError, match="prompt_source_size >= 1"):
        resolve_prompts(None, "shapes", 0, 0, None)
    with pytest.raises(ValueError, match=r"no prompt source 'pictures'; registered: \[.*'shapes'"):
        resolve_prompts(None, "pictures", 2, 0, None)
    # The shapes world's source, registered by its plug-in (the entry point in setup.cfg).
    shapes = resolve_prompts(None, "shapes", 2, 0, None)
    assert len(shapes) == 2 * len({record.category for record in shapes}) and all(r.prompt for r in shapes)
    assert shapes == resolve_prompts(None, "shapes", 2, 0, None)  # seeded


def test_a_rollout_config_names_its_prompts(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\ntwo blue squares\na green triangle\n")
    from_file = RolloutConfig(prompts_file=str(tmp_path / "p.txt"), num_prompts=2, proposer="components")
    assert [r.prompt for r in config_prompts(from_file)] == ["a red circle", "two blue squares"]
    shapes = RolloutConfig(prompt_source="shapes", prompt_source_size=2, rollout_seed=3, proposer="components")
    assert config_prompts(shapes) == resolve_prompts(None, "shapes", 2, 3, None)
    assert config_prompts(shapes) != resolve_prompts(None, "shapes", 2, 4, None)
