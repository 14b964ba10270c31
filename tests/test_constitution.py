"""Constitutions: built-ins, the paper's and llm-swarm's JSON shapes, sampling, hashing, YAML, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from charter.constitution import (
    Constitution,
    ConstitutionError,
    Principle,
    list_constitutions,
    load_constitution,
)
from charter.resources import builtin_data_dir

DATA = Path(__file__).parent / "data"
BAD = DATA / "bad_constitutions"
SL_JSON = DATA / "anthropic" / "CritiqueRevisionInstructions.json"
RL_JSON = DATA / "anthropic" / "RLMadisonInstructions.json"
GROK_JSON = DATA / "hf" / "constitution_grok.json"

BUILTIN_COUNTS = {"anthropic-sl": 16, "anthropic-rl": 16, "hf-anthropic": 16, "hf-grok": 2}


@pytest.fixture(autouse=True)
def _no_user_search_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own constitutions must not shadow the built-ins under test.
    monkeypatch.delenv("CHARTER_CONSTITUTIONS_PATH", raising=False)


def small(**changes: object) -> Constitution:
    data: dict[str, object] = {
        "name": "small",
        "principles": [
            {"name": "a", "critique": "Find A.", "revision": "Fix A."},
            {"name": "b", "feedback": "Please choose the response that is B."},
        ],
    }
    data.update(changes)
    return Constitution.model_validate(data)


# --- built-ins ---------------------------------------------------------------------------------------


def test_builtins_are_listed() -> None:
    names = [name for name, _ in list_constitutions()]
    assert set(BUILTIN_COUNTS) | {"un-declaration"} <= set(names)
    assert names == sorted(names)
    assert all(path.parent == builtin_data_dir("constitutions") for _, path in list_constitutions())


@pytest.mark.parametrize(("name", "count"), BUILTIN_COUNTS.items())
def test_builtin_counts(name: str, count: int) -> None:
    constitution = load_constitution(name)
    assert constitution.name == name
    assert len(constitution.principles) == count
    assert constitution.source


def test_anthropic_sl_equals_paper_json() -> None:
    yaml_version = load_constitution("anthropic-sl")
    json_version = load_constitution(SL_JSON)
    assert yaml_version.principles == json_version.principles
    raw = json.loads(SL_JSON.read_text())
    assert yaml_version.names == list(raw) == [f"harmful{i}" for i in range(16)]
    for principle in yaml_version.principles:
        # Re-framing the bare text must give back the paper's strings exactly (typos included).
        assert f"\n\nCritiqueRequest: {principle.critique}\n\nCritique:" == raw[principle.name]["prompt"][0]
        assert (
            f"\n\nRevisionRequest: {principle.revision}\n\nRevision:" == raw[principle.name]["edit_request"]
        )
    assert "precedings response" in yaml_version.get("harmful3").critique  # type: ignore[operator]
    few_shot = yaml_version.few_shot
    assert len(few_shot.completion) == 5
    assert all(t.startswith("\n\nHuman:") and "CritiqueRequest:" in t for t in few_shot.completion)
    assert sum(t.endswith("\n\nHuman:") for t in few_shot.completion) == 4  # the 4th lacks the stop text


def test_anthropic_rl_equals_paper_json() -> None:
    yaml_version = load_constitution("anthropic-rl")
    json_version = load_constitution(RL_JSON)
    assert yaml_version.principles == json_version.principles
    raw = json.loads(RL_JSON.read_text())
    assert [f"\n{p.feedback} Options:" for p in yaml_version.principles] == raw
    assert yaml_version.names == [f"feedback{i}" for i in range(16)]
    assert yaml_version.get("feedback1").feedback == (
        "Please choose the response that is the most helpful, honest, and harmless."
    )
    assert yaml_version.critique_principles == []
    few_shot = yaml_version.few_shot
    assert len(few_shot.multiple_choice) == 5
    assert all(ex.conversation.endswith("\n\nAssistant:") for ex in few_shot.multiple_choice)
    assert len(few_shot.chain_of_thought) == 6
    assert all(p.count("{}") == 1 for p in few_shot.chain_of_thought)


def test_hf_json_shape_equals_builtin() -> None:
    from_json = load_constitution(GROK_JSON)
    builtin = load_constitution("hf-grok")
    assert from_json.name == "constitution_grok"
    assert from_json.names == ["constitution_grok-0", "constitution_grok-1"]
    assert [(p.critique, p.revision) for p in from_json.principles] == [
        (p.critique, p.revision) for p in builtin.principles
    ]
    raw = json.loads(GROK_JSON.read_text())
    assert [[m.model_dump() for m in chat] for chat in builtin.few_shot.chat] == raw["system_chat"]
    assert from_json.few_shot.chat == builtin.few_shot.chat


def test_un_declaration() -> None:
    constitution = load_constitution("un-declaration")
    assert 8 <= len(constitution.principles) <= 12
    assert all(p.critique and p.revision and p.feedback for p in constitution.principles)
    feedback = [p.feedback or "" for p in constitution.principles]
    assert all(f.startswith("Please choose the response that ") for f in feedback)
    # The two principles quoted in the seed notes, verbatim.
    assert (
        "Please choose the response that most supports and encourages freedom, equality, and a sense of "
        "brotherhood." in feedback
    )
    assert (
        "Please choose the response that is least racist and sexist, and that is least discriminatory based "
        "on language, religion, political or other opinion, national or social origin, property, birth or "
        "other status." in feedback
    )
    assert "charter" in constitution.source


# --- lookup ------------------------------------------------------------------------------------------


def test_path_and_name_forms(tmp_path: Path) -> None:
    path = builtin_data_dir("constitutions") / "anthropic-sl.yaml"
    assert load_constitution(str(path)) == load_constitution(path) == load_constitution("anthropic-sl")


def test_search_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "anthropic-sl.yaml").write_text(small(name="from-search-path").to_yaml())
    (second / "anthropic-sl.yaml").write_text(small(name="from-env").to_yaml())
    (second / "only-env.yaml").write_text(small(name="only-env").to_yaml())
    monkeypatch.setenv("CHARTER_CONSTITUTIONS_PATH", f"{second}")
    assert load_constitution("anthropic-sl", search_path=[first]).name == "from-search-path"
    assert load_constitution("anthropic-sl").name == "from-env"
    assert load_constitution("only-env").name == "only-env"
    listed = dict(list_constitutions([first]))
    assert listed["anthropic-sl"] == first / "anthropic-sl.yaml"
    assert listed["only-env"] == second / "only-env.yaml"


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ConstitutionError) as info:
        load_constitution("no-such-constitution")
    message = str(info.value)
    assert message.startswith("no-such-constitution: ")
    assert "anthropic-sl" in message and "un-declaration" in message
    assert "\n" not in message


def test_get_unknown_principle_lists_names() -> None:
    with pytest.raises(KeyError, match="available: a, b"):
        small().get("c")
    assert small().get("b").feedback == "Please choose the response that is B."


def test_builtin_data_dir() -> None:
    assert (builtin_data_dir("constitutions") / "anthropic-rl.yaml").is_file()
    assert builtin_data_dir("prompts").is_dir()
    with pytest.raises(ValueError, match="unknown data kind"):
        builtin_data_dir("models")


# --- models ------------------------------------------------------------------------------------------


def test_principle_needs_a_pair_or_feedback() -> None:
    assert Principle(name="f", feedback="Choose well.").critique is None
    Principle(name="both", critique="c", revision="r", feedback="f")
    with pytest.raises(ValueError, match="pair"):
        Principle(name="half", critique="c")
    with pytest.raises(ValueError, match="pair"):
        Principle(name="half", revision="r", feedback="f")
    with pytest.raises(ValueError, match="critique and revision, or feedback"):
        Principle(name="empty")
    with pytest.raises(ValueError, match="blank"):
        Principle(name="blank", feedback="  ")


def test_critique_and_feedback_views() -> None:
    constitution = small()
    assert [p.name for p in constitution.critique_principles] == ["a"]
    assert [p.name for p in constitution.feedback_principles] == ["b"]


# --- sampling ----------------------------------------------------------------------------------------


def test_sample_is_seeded_uniform_with_replacement() -> None:
    constitution = load_constitution("anthropic-sl")
    draws = constitution.sample(random.Random(0), k=1000)
    names = [p.name for p in draws]
    assert set(names) == set(constitution.names)  # every principle can come up
    assert len(set(names[:16])) < 16  # with replacement: 16 draws from 16 repeat
    assert names == [p.name for p in constitution.sample(random.Random(0), k=1000)]
    assert names != [p.name for p in constitution.sample(random.Random(1), k=1000)]
    # Roughly uniform: each of 16 principles near 1000/16 = 62.5.
    assert all(25 < names.count(n) < 110 for n in constitution.names)


def test_sample_uses_only_the_given_rng() -> None:
    constitution = small()
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    constitution.sample(random.Random(5), k=10)
    assert random.random() == expected_next


def test_sample_kind_and_edges() -> None:
    constitution = small()
    assert {p.name for p in constitution.sample(random.Random(0), k=50, kind="critique")} == {"a"}
    assert {p.name for p in constitution.sample(random.Random(0), k=50, kind="feedback")} == {"b"}
    assert constitution.sample(random.Random(0), k=0) == []
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        constitution.sample(random.Random(0), k=-1)
    with pytest.raises(ValueError, match="no critique principles"):
        load_constitution("anthropic-rl").sample(random.Random(0), kind="critique")


# --- hashing and YAML --------------------------------------------------------------------------------


def test_content_hash_is_canonical() -> None:
    constitution = small()
    digest = constitution.content_hash()
    assert len(digest) == 64 and int(digest, 16) >= 0
    # Same content, keys in another order -> same hash.
    reordered = Constitution.model_validate(
        {
            "principles": [
                {"revision": "Fix A.", "critique": "Find A.", "name": "a"},
                {"feedback": "Please choose the response that is B.", "name": "b"},
            ],
            "name": "small",
        }
    )
    assert reordered.content_hash() == digest
    # Pinned: the canonical form must not drift between runs or releases without notice.
    assert digest == "4d667213f7f35547b1b99d674ed211baf6c2776441efa4e8bc061993720a318c"


def test_content_hash_changes_with_text() -> None:
    constitution = load_constitution("anthropic-sl")
    assert constitution.content_hash() == load_constitution("anthropic-sl").content_hash()
    principles = list(constitution.principles)
    principles[3] = principles[3].model_copy(update={"critique": "Identify specific ways."})
    changed = constitution.model_copy(update={"principles": principles})
    assert changed.content_hash() != constitution.content_hash()


@pytest.mark.parametrize("name", [*BUILTIN_COUNTS, "un-declaration"])
def test_builtin_to_yaml_round_trip(name: str, tmp_path: Path) -> None:
    constitution = load_constitution(name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(constitution.to_yaml(), encoding="utf-8")
    assert load_constitution(path) == constitution


def test_to_yaml_round_trips_awkward_strings(tmp_path: Path) -> None:
    awkward = [
        "\n\nHuman: hi\n\nAssistant:",  # leading newlines, no trailing newline
        "ends with newlines\n\n",
        "trailing spaces  \non a line\n",
        "  leading spaces\nand more",
        "tab\tinside\nand a {} placeholder",
        "unicode: I’m – “quoted” – é",
        "yes",
        "null",
        "123",
        "- looks like a list",
        "key: value",
    ]
    constitution = small(
        description="multi\nline\n",
        few_shot={
            "completion": awkward,
            "chain_of_thought": ["\nHuman: {}\n"],
            "multiple_choice": [
                {"conversation": "\n\nHuman: x\n\nAssistant:", "chosen": "a", "rejected": "b"}
            ],
            "chat": [
                [{"role": "user", "content": "line one\nline two"}, {"role": "assistant", "content": "ok"}]
            ],
        },
    )
    text = constitution.to_yaml()
    assert "I’m" in text  # unicode kept, not escaped
    assert "content: |" in text  # multi-line strings as block scalars
    path = tmp_path / "awkward.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_constitution(path)
    assert loaded == constitution
    assert loaded.few_shot.completion == awkward


# --- bad files ---------------------------------------------------------------------------------------


def error_for(path: str | Path) -> str:
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, ValueError)
    return message


def test_yaml_syntax_error_names_file_and_line() -> None:
    message = error_for(BAD / "syntax_error.yaml")
    assert message.startswith(f"{BAD / 'syntax_error.yaml'}: line 6, column 1: invalid YAML")
    assert "line 4" in message  # where the unclosed quote started


def test_json_syntax_error_names_file_and_line() -> None:
    message = error_for(BAD / "syntax_error.json")
    assert message.startswith(f"{BAD / 'syntax_error.json'}: line 4, column 5: JSON syntax error")


def test_missing_field_names_file_and_field_path() -> None:
    message = error_for(BAD / "missing_field.yaml")
    assert message == f"{BAD / 'missing_field.yaml'}: principles[1].name: field required (line 5)"


def test_unpaired_critique() -> None:
    message = error_for(BAD / "unpaired.yaml")
    assert "unpaired.yaml: principles[0]: critique and revision come as a pair" in message


def test_duplicate_principle_names() -> None:
    message = error_for(BAD / "duplicate_names.yaml")
    assert "duplicate_names.yaml: principles: duplicate principle name 'same' at [0] and [2]" in message


def test_duplicate_yaml_key() -> None:
    assert "duplicate_key.yaml: line 5, column 3: invalid YAML: duplicate key 'feedback'" in error_for(
        BAD / "duplicate_key.yaml"
    )


def test_misspelled_key_is_an_error() -> None:
    message = error_for(BAD / "unknown_key.yaml")
    assert "unknown_key.yaml: principles[0].critque: extra inputs are not permitted (line 4)" in message


def test_missing_file() -> None:
    assert error_for("does/not/exist.yaml") == "does/not/exist.yaml: file not found"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (["\nNo options suffix"], "[0]: expected a string framed as"),
        ({"harmful0": {"prompt": ["bare"], "edit_request": "x"}}, "harmful0.prompt[0]: expected"),
        ({"harmful0": {"prompt": [], "edit_request": "x"}}, "harmful0.prompt: expected a list"),
        ({"constitutions": [{"critic": "c"}]}, "constitutions[0]: expected an object"),
        ({"something": "else"}, "unrecognised format"),
        ({"name": "x", "principles": []}, "principles: list should have at least 1 item"),
    ],
)
def test_bad_json_shapes(tmp_path: Path, content: object, expected: str) -> None:
    path = tmp_path / "shape.json"
    path.write_text(json.dumps(content))
    message = error_for(path)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_empty_yaml(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert error_for(path) == f"{path}: empty file"
