"""Three disjoint prompt splits: the direction's, the layer-and-threshold's, and a test split no fit decision
sees."""

from __future__ import annotations

import pytest
import torch
from plans import TINY_FALLBACK
from tiny_models import tiny_text_model

from steerpeft import Callback
from steerpeft.data.splits import holdout_split
from steerpeft.errors import ConfigError
from steerpeft.recipes import load_recipe
from steerpeft.run import eval_prompts

FIT = ["fit.test_fraction=0.25", "fit.validation_fraction=0.4"]


def test_the_three_parts_are_disjoint_and_cover_the_data() -> None:
    recipe = load_recipe("mars", FIT)
    parts = recipe.split_prompts()
    positive, _ = recipe.prompts()
    for label, source in (("positive", list(positive)), ("negative", list(recipe.prompts()[1]))):
        train, validation, test = parts[label], parts[f"{label}_validation"], parts[f"{label}_test"]
        assert sorted(train + validation + test) == sorted(source)
        assert not (set(train) & set(validation)) and not (set(test) & (set(train) | set(validation)))
        assert (len(test) == round(len(source) * 0.25)
                and len(validation) == round((len(source) - len(test)) * 0.4))
    assert recipe.split_prompts() == parts  # deterministic


def test_no_test_fraction_gives_the_two_way_split_of_before() -> None:
    recipe = load_recipe("mars", ["fit.validation_fraction=0.4", "fit.test_fraction=0"])
    parts = recipe.split_prompts()
    positive = list(recipe.prompts()[0])
    assert (parts["positive"], parts["positive_validation"]) == holdout_split(positive, 0.4, 0)
    assert parts["positive_test"] == []


def test_a_bad_test_fraction_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"test_fraction must be in \[0, 1\)"):
        load_recipe("mars", ["fit.test_fraction=1.0"])


class Totals(Callback):
    def __init__(self) -> None:
        self.totals: dict[str, int] = {}

    def on_record_start(self, runner, split, total) -> None:
        self.totals[split] = total


def test_the_fit_never_sees_the_test_split() -> None:
    torch.set_num_threads(1)
    model, tok = tiny_text_model("llama")
    recipe = load_recipe("actadd", [*FIT, "data.limit=20", "steps.0.selector.candidates=[1, 2]"])
    parts = recipe.split_prompts()
    totals = Totals()
    recipe.fit(model, tok, callbacks=[totals])
    assert totals.totals["positive"] == len(parts["positive"])
    assert totals.totals["positive_validation"] == len(parts["positive_validation"])
    assert sum(totals.totals.values()) == sum(len(parts[k]) for k in parts if not k.endswith("_test"))


def test_the_run_reports_on_the_test_split_and_says_so() -> None:
    harmful, harmless, source = eval_prompts(load_recipe("mars", FIT))
    parts = load_recipe("mars", FIT).split_prompts()
    assert (harmful, harmless) == (parts["positive_test"], parts["negative_test"])
    assert source.startswith("the test split")
    harmful, _, source = eval_prompts(load_recipe("mars", ["fit.test_fraction=0", TINY_FALLBACK]))
    assert harmful == load_recipe("mars", ["fit.test_fraction=0"]).split_prompts()["positive_validation"]
    assert "optimistic" in source
