"""Progress on every long stage, also when stderr is not a terminal (logs, CI): one line per stage end."""

from __future__ import annotations

import pytest
import torch
from plans import HARMFUL, HARMLESS
from tiny_models import tiny_text_model

from steerpeft import ProgressBar, Steerer
from steerpeft.evaluation import evaluate
from steerpeft.extractors import DiffMeans
from steerpeft.inputs.text import encode_prompts
from steerpeft.selectors import SweepSelector


@pytest.fixture(scope="module")
def llama():
    torch.set_num_threads(1)
    return tiny_text_model("llama")


def test_each_stage_ends_with_one_line_when_stderr_is_not_a_terminal(llama, capsys) -> None:
    model, tok = llama
    steerer = Steerer(DiffMeans(), SweepSelector(candidates=[1, 2]), callbacks=[ProgressBar()], batch_size=2)
    plan = steerer.fit(model, tok, HARMFUL, HARMLESS)
    evaluate(model, tok, {"harmful/text": [encode_prompts(tok, HARMFUL[:2])]},
             {"steered": lambda: plan.apply(model)}, max_new_tokens=2)
    lines = capsys.readouterr().err.splitlines()
    for start in ("recording positive: 4/4 prompts done in", "recording negative: 4/4 prompts done in",
                  "recording positive_validation: 2/2 prompts done in", "scoring layers: 2 layers done in",
                  "evaluating unsteered: 1/1 batches done in", "evaluating steered: 1/1 batches done in"):
        assert sum(line.startswith(start) for line in lines) == 1, (start, lines)


def test_a_failing_stage_closes_its_bar_with_a_stopped_line(llama, capsys) -> None:
    model, tok = llama

    class Boom(ProgressBar):
        def on_batch_end(self, runner, split, rows) -> None:
            super().on_batch_end(runner, split, rows)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Steerer(DiffMeans(), SweepSelector(candidates=[1]), callbacks=[Boom()], batch_size=2).fit(
            model, tok, HARMFUL, HARMLESS)
    assert "recording positive: 2/4 prompts stopped in" in capsys.readouterr().err


def test_quiet_means_silent(llama, capsys) -> None:
    model, tok = llama
    Steerer(DiffMeans(), SweepSelector(candidates=[1]), callbacks=[ProgressBar(disable=True)]).fit(
        model, tok, HARMFUL, HARMLESS)
    assert capsys.readouterr().err == ""
