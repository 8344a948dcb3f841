"""Built-in prompt sets (content and style balance) and the prompt loaders."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter

import pytest

from steerpeft.data import PromptSet, builtin_pairs, builtin_prompts, load_prompts
from steerpeft.errors import ConfigError, DataError

# ---------------------------------------------------------------------------
# Built-in sets


@pytest.fixture(scope="module")
def harmful() -> PromptSet:
    return builtin_prompts("harmful")


@pytest.fixture(scope="module")
def harmless() -> PromptSet:
    return builtin_prompts("harmless")


def test_builtin_counts_are_large_and_equal(harmful: PromptSet, harmless: PromptSet) -> None:
    assert len(harmful) >= 80
    assert len(harmless) >= 80
    assert len(harmful) == len(harmless) == len(builtin_pairs())


def test_builtin_meta_counts_match_pairs() -> None:
    from importlib import resources

    document = json.loads(
        resources.files("steerpeft.data").joinpath("builtin_prompts.json").read_text(encoding="utf-8")
    )
    meta = document["_meta"]
    assert meta["count_harmful"] == meta["count_harmless"] == len(document["pairs"])
    assert "Apache-2.0" in meta["license"]


def test_builtin_prompts_are_unique_and_non_empty(harmful: PromptSet, harmless: PromptSet) -> None:
    everything = list(harmful) + list(harmless)
    assert all(p and p == p.strip() for p in everything)
    duplicates = [p for p, n in Counter(p.lower() for p in everything).items() if n > 1]
    assert not duplicates, duplicates


def test_builtin_prompts_are_requests_not_answers(harmful: PromptSet, harmless: PromptSet) -> None:
    for prompt in list(harmful) + list(harmless):
        assert not prompt.lower().startswith(("sure", "here is", "here's", "certainly", "step 1")), prompt


def test_builtin_pairs_cover_the_topics() -> None:
    topics = {topic for topic, _, _ in builtin_pairs()}
    expected = {
        "weapons", "drugs", "cybercrime", "fraud", "violence", "harassment", "self-harm",
        "extremism", "privacy", "theft", "chemistry", "biology", "misinformation",
    }  # fmt: skip
    assert expected <= topics
    per_topic = Counter(topic for topic, _, _ in builtin_pairs())
    assert min(per_topic.values()) >= 5


def _first_word(prompt: str) -> str:
    return prompt.split()[0].lower().strip(",.?!")


def test_builtin_style_is_balanced(harmful: PromptSet, harmless: PromptSet) -> None:
    """Form must not separate the classes, or a difference of means learns form, not harm."""

    def fraction(prompts: PromptSet, predicate) -> float:
        return sum(1 for p in prompts if predicate(p)) / len(prompts)

    def is_question(p: str) -> bool:
        return p.endswith("?")

    assert abs(fraction(harmful, is_question) - fraction(harmless, is_question)) <= 0.1

    common = Counter(_first_word(p) for p in list(harmful) + list(harmless)).most_common(5)
    for word, _ in common:

        def starts(p: str, word: str = word) -> bool:
            return _first_word(p) == word

        gap = abs(fraction(harmful, starts) - fraction(harmless, starts))
        assert gap <= 0.1, f"first word {word!r} differs by {gap:.2f} between the classes"

    def mean_words(prompts: PromptSet) -> float:
        return sum(len(p.split()) for p in prompts) / len(prompts)

    def mean_chars_per_word(prompts: PromptSet) -> float:
        words = [w for p in prompts for w in p.split()]
        return sum(len(w) for w in words) / len(words)

    for measure in (mean_words, mean_chars_per_word):
        a, b = measure(harmful), measure(harmless)
        assert abs(a - b) / max(a, b) <= 0.25, f"{measure.__name__}: {a:.2f} vs {b:.2f}"


def test_builtin_twins_share_their_grammatical_form() -> None:
    for topic, bad, good in builtin_pairs():
        assert bad.endswith("?") == good.endswith("?"), (topic, bad, good)
        assert _first_word(bad) == _first_word(good), (topic, bad, good)


def test_builtin_unknown_kind_suggests_nearest() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'harmless'"):
        builtin_prompts("harmles")


def test_builtin_is_cached_and_named(harmful: PromptSet) -> None:
    assert builtin_prompts("harmful") == harmful
    assert harmful.name == "builtin:harmful"


# ---------------------------------------------------------------------------
# PromptSet


def test_prompt_set_refuses_empty_and_non_strings() -> None:
    with pytest.raises(DataError, match="empty"):
        PromptSet("x", ())
    with pytest.raises(DataError, match="not a string"):
        PromptSet("x", ("a", 3))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="empty string"):
        PromptSet("x", ("a", "  "))


def test_prompt_set_stores_a_tuple() -> None:
    prompts = PromptSet("x", ["a", "b"])  # type: ignore[arg-type]
    assert prompts.prompts == ("a", "b")
    assert len(prompts) == 2


def test_split_is_deterministic_and_partitions(harmful: PromptSet) -> None:
    train, validation = harmful.split(0.25, seed=3)
    again_train, again_validation = harmful.split(0.25, seed=3)
    assert train == again_train and validation == again_validation
    assert len(validation) == round(len(harmful) * 0.25)
    assert sorted(train.prompts + validation.prompts) == sorted(harmful.prompts)
    assert not set(train.prompts) & set(validation.prompts)
    other_train, _ = harmful.split(0.25, seed=4)
    assert other_train != train
    # each part keeps the original order
    positions = [harmful.prompts.index(p) for p in train]
    assert positions == sorted(positions)


def test_split_refuses_an_empty_part() -> None:
    with pytest.raises(DataError, match="empty"):
        PromptSet("one", ("only",)).split(0.5)
    with pytest.raises(DataError, match="empty"):
        PromptSet("three", ("a", "b", "c")).split(0.1)
    with pytest.raises(ConfigError):
        PromptSet("two", ("a", "b")).split(1.0)
    train, validation = PromptSet("two", ("a", "b")).split(0.5)
    assert len(train) == len(validation) == 1


def test_take() -> None:
    prompts = PromptSet("x", ("a", "b", "c"))
    assert prompts.take(2).prompts == ("a", "b")
    with pytest.raises(DataError):
        prompts.take(4)
    with pytest.raises(ConfigError):
        prompts.take(0)


# ---------------------------------------------------------------------------
# Loaders


def test_load_txt_skips_blank_and_comment_lines(tmp_path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\n  first prompt  \n\nsecond prompt\n   # indented comment\nfirst prompt\n")
    prompts = load_prompts(path)
    assert prompts.prompts == ("first prompt", "second prompt", "first prompt")
    assert prompts.name == "mine"


def test_load_csv_with_column(tmp_path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('id,instruction\n1,"Plan a trip, please"\n2,Name three birds\n')
    assert load_prompts(path, column="instruction").prompts == ("Plan a trip, please", "Name three birds")


def test_load_tsv_single_column_needs_no_name(tmp_path) -> None:
    path = tmp_path / "data.tsv"
    path.write_text("text\nAlpha\nBeta\n")
    assert load_prompts(path).prompts == ("Alpha", "Beta")


def test_load_csv_missing_column_lists_and_suggests(tmp_path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("id,instruction\n1,Name three birds\n")
    with pytest.raises(DataError, match="Did you mean 'instruction'") as info:
        load_prompts(path, column="instructions")
    assert "id, instruction" in str(info.value)
    with pytest.raises(DataError, match="several columns"):
        load_prompts(path)


def test_load_json_list(tmp_path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps(["one", " two "]))
    assert load_prompts(path).prompts == ("one", "two")


def test_load_json_objects(tmp_path) -> None:
    path = tmp_path / "objects.json"
    path.write_text(json.dumps([{"prompt": "one", "label": 1}, {"prompt": "two", "label": 0}]))
    assert load_prompts(path, column="prompt").prompts == ("one", "two")
    with pytest.raises(DataError, match="column="):
        load_prompts(path)
    with pytest.raises(DataError, match="Did you mean 'prompt'"):
        load_prompts(path, column="prompts")


def test_load_json_object_with_prompts_key(tmp_path) -> None:
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "instructions": ["one", "two"]}))
    assert load_prompts(path).prompts == ("one", "two")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"items": ["x"]}))
    with pytest.raises(DataError, match="'prompts' or 'instructions'"):
        load_prompts(other)
    assert load_prompts(other, column="items").prompts == ("x",)


def test_load_json_non_string_entry(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(["fine", 7]))
    with pytest.raises(DataError, match="entry 1 is a int"):
        load_prompts(path)


def test_load_jsonl_objects_and_strings(tmp_path) -> None:
    objects = tmp_path / "objects.jsonl"
    objects.write_text('{"text": "one", "n": 1}\n\n{"text": "two", "n": 2}\n')
    assert load_prompts(objects, column="text").prompts == ("one", "two")
    strings = tmp_path / "strings.jsonl"
    strings.write_text('"one"\n"two"\n')
    assert load_prompts(strings).prompts == ("one", "two")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('"one"\n{not json\n')
    with pytest.raises(DataError, match="line 2"):
        load_prompts(broken)


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".json", ".jsonl"])
def test_load_empty_file(tmp_path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_text("\n# nothing\n" if suffix == ".txt" else "")
    with pytest.raises(DataError, match="no prompts found"):
        load_prompts(path)


def test_load_empty_json_list(tmp_path) -> None:
    path = tmp_path / "empty.json"
    path.write_text("[]")
    with pytest.raises(DataError, match="no prompts found"):
        load_prompts(path)


def test_load_unknown_extension(tmp_path) -> None:
    path = tmp_path / "prompts.parquet"
    path.write_text("x")
    with pytest.raises(DataError, match=r"\.txt, \.csv, \.tsv, \.json, \.jsonl"):
        load_prompts(path)


def test_load_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "absent.txt")


def test_load_builtin_names(harmful: PromptSet, harmless: PromptSet) -> None:
    assert load_prompts("builtin:harmful") == harmful
    assert load_prompts("builtin:harmless", limit=5, name="few").prompts == harmless.prompts[:5]
    with pytest.raises(ConfigError, match="Did you mean 'harmful'"):
        load_prompts("builtin:harmfull")


def test_load_limit_must_be_positive(tmp_path) -> None:
    with pytest.raises(ConfigError):
        load_prompts("builtin:harmful", limit=0)


def test_load_hf_without_datasets_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="pip install datasets"):
        load_prompts("hf:someone/some-prompts")


def test_load_hf_with_a_stand_in_datasets_module(monkeypatch) -> None:
    class FakeDataset:
        column_names = ("goal", "target")

        def __getitem__(self, key: str) -> list[str]:
            return {"goal": ["one ", "two"], "target": ["x", "y"]}[key]

    calls = []

    def load_dataset(name: str, split: str) -> FakeDataset:
        calls.append((name, split))
        return FakeDataset()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    prompts = load_prompts("hf:org/name", column="goal", split="test")
    assert prompts.prompts == ("one", "two")
    assert prompts.name == "hf:org/name"
    assert calls == [("org/name", "test")]
    with pytest.raises(DataError, match="Did you mean 'goal'"):
        load_prompts("hf:org/name", column="goals")
