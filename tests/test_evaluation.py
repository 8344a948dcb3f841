"""steerpeft.evaluation: keyword judge, first-token score, KL, model runs and `evaluate`."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from tiny_models import smollm2_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from steerpeft.errors import ConfigError, DataError, ShapeError
from steerpeft.evaluation import (
    MAX_LOG_ODDS,
    REFUSAL_PHRASES,
    UNSTEERED,
    add_refusal_phrases,
    decision_logits,
    evaluate,
    first_token_kl,
    first_token_refusal_score,
    generate_texts,
    is_refusal,
    refusal_rate,
    refusal_token_ids,
)
from steerpeft.inputs.text import encode_prompts

# ---------------------------------------------------------------------------
# Keyword judge


@pytest.fixture
def restore_phrases():
    saved = list(REFUSAL_PHRASES)
    yield
    REFUSAL_PHRASES[:] = saved


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "i AM UNABLE to do this",
        "AS AN AI language model, I must decline.",
        "Well... I cannot assist with making weapons.",
        "I can\u2019t help with that request.",  # curly apostrophe
        "I won\u2019t do that.",
    ],
)
def test_refusals_are_detected(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    ["Sure! Here is a simple bread recipe.", "The capital of France is Paris.", "", "Iceland is cold."],
)
def test_non_refusals_are_not_flagged(text: str) -> None:
    assert not is_refusal(text)


def test_refusal_phrases_can_be_extended(restore_phrases: None) -> None:
    text = "Nope, not touching that one."
    assert not is_refusal(text)
    add_refusal_phrases("NOT TOUCHING that")
    assert is_refusal(text)
    size = len(REFUSAL_PHRASES)
    add_refusal_phrases("not touching that", "i\u2019m sorry")  # already known, in other spellings
    assert len(REFUSAL_PHRASES) == size
    with pytest.raises(ConfigError):
        add_refusal_phrases("  ")


def test_explicit_phrases_replace_the_default_list() -> None:
    assert not is_refusal("I'm sorry", phrases=["no way"])
    assert is_refusal("No WAY.", phrases=["no way"])


def test_refusal_rate() -> None:
    texts = ["I'm sorry, no.", "Sure thing.", "As an AI, I will not.", "Here you go."]
    assert refusal_rate(texts) == 0.5
    with pytest.raises(DataError):
        refusal_rate([])


# ---------------------------------------------------------------------------
# First-token refusal score


def test_first_token_score_matches_hand_computation() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0]])
    # Row 0: p(R) = 1/4 -> log(1/4) - log(3/4) = log(1/3).
    # Row 1 with R = {0, 1}: p(R) = (3 + 1) / (3 + 3) = 2/3 -> log 2.
    assert first_token_refusal_score(logits[:1], [0]).item() == pytest.approx(math.log(1 / 3), abs=1e-6)
    assert first_token_refusal_score(logits[1:], [0, 1]).item() == pytest.approx(math.log(2.0), abs=1e-6)
    # Duplicated ids count once; half-precision input is scored in float32.
    scores = first_token_refusal_score(logits.half(), torch.tensor([0, 0]))
    assert scores.dtype == torch.float32
    assert scores.tolist() == pytest.approx([math.log(1 / 3), math.log(3 / 3)], abs=1e-3)


def test_first_token_score_stays_finite_on_extreme_logits() -> None:
    logits = torch.tensor(
        [
            [1e4, 0.0, 0.0],
            [-1e4, 0.0, 0.0],
            [0.0, float("-inf"), float("-inf")],  # p(R) = 1 exactly
            [float("-inf"), 0.0, 0.0],  # p(R) = 0 exactly
            [60.0, 0.0, 0.0],  # 1 - p(R) underflows in float32 but log-odds are still exact
        ]
    )
    scores = first_token_refusal_score(logits, [0])
    assert torch.isfinite(scores).all()
    assert scores[:4].tolist() == [MAX_LOG_ODDS, -MAX_LOG_ODDS, MAX_LOG_ODDS, -MAX_LOG_ODDS]
    assert scores[4].item() == pytest.approx(60.0 - math.log(2.0), abs=1e-4)


def test_first_token_score_rejects_bad_ids() -> None:
    with pytest.raises(ShapeError):
        first_token_refusal_score(torch.zeros(2, 5), [5])
    with pytest.raises(ConfigError):
        first_token_refusal_score(torch.zeros(2, 5), [])


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


def test_refusal_token_ids(tokenizer) -> None:
    ids = refusal_token_ids(tokenizer)
    assert ids == sorted(set(ids))
    first = {tokenizer.encode(w, add_special_tokens=False)[0] for w in ("I", "Sorry", " I", "Unfortunately")}
    assert first <= set(ids)
    assert all(tokenizer.decode([i]).strip() for i in ids)
    # A processor is accepted through its `.tokenizer`; custom openings replace the defaults.
    processor = SimpleNamespace(tokenizer=tokenizer)
    assert refusal_token_ids(processor, ["Unfortunately"]) == sorted(
        {tokenizer.encode(w, add_special_tokens=False)[0] for w in ("Unfortunately", " Unfortunately")}
    )
    with pytest.raises(ConfigError):
        refusal_token_ids(tokenizer, [])


# ---------------------------------------------------------------------------
# KL


def test_kl_is_zero_for_equal_distributions() -> None:
    logits = torch.randn(3, 11, generator=torch.Generator().manual_seed(0))
    assert first_token_kl(logits, logits).abs().max().item() < 1e-6
    assert first_token_kl(logits, logits + 7.0).abs().max().item() < 1e-5  # softmax ignores a shift


def test_kl_matches_hand_computation() -> None:
    ref = torch.tensor([[0.5, 0.25, 0.25]]).log()
    steered = torch.tensor([[0.25, 0.25, 0.5]]).log()
    # 0.5 log(0.5/0.25) + 0.25 log(1) + 0.25 log(0.25/0.5) = 0.25 log 2; KL is asymmetric in general.
    assert first_token_kl(ref, steered).item() == pytest.approx(0.25 * math.log(2.0), abs=1e-6)
    # Tokens the reference rules out contribute nothing (no NaN from 0 * inf):
    # P_ref = (1/2, 0, 1/2) vs uniform -> 2 * 1/2 * log(3/2).
    ref = torch.tensor([[0.0, float("-inf"), 0.0]])
    assert first_token_kl(ref, torch.zeros(1, 3)).item() == pytest.approx(math.log(1.5), abs=1e-6)


def test_kl_is_non_negative_and_checks_shapes() -> None:
    gen = torch.Generator().manual_seed(1)
    ref, steered = torch.randn(64, 7, generator=gen) * 5, torch.randn(64, 7, generator=gen) * 5
    kl = first_token_kl(ref, steered.half())
    assert kl.shape == (64,) and kl.dtype == torch.float32 and (kl >= 0).all() and (kl > 0).any()
    with pytest.raises(ShapeError):
        first_token_kl(ref, steered[:, :6])


# ---------------------------------------------------------------------------
# Model runs


def _tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(config, attn_implementation="eager", dtype=torch.float32).eval()


def _padded(rows: list[list[int]], side: str, pad: int = 0) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    ids, mask = [], []
    for row in rows:
        fill = [pad] * (width - len(row))
        ones, zeros = [1] * len(row), [0] * len(fill)
        ids.append(fill + row if side == "left" else row + fill)
        mask.append(zeros + ones if side == "left" else ones + zeros)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


@pytest.mark.parametrize("side", ["left", "right"])
def test_decision_logits_match_unpadded_rows(side: str) -> None:
    model = _tiny_llama(vocab_size=100)
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 100, (n,), generator=gen).tolist() for n in (5, 3, 7)]
    batched = decision_logits(model, _padded(rows, side))
    assert batched.shape == (3, 100) and batched.dtype == torch.float32
    with torch.no_grad():
        alone = torch.stack([model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows])
    assert (batched - alone).abs().max().item() < 1e-5


def test_decision_logits_need_a_mask() -> None:
    model = _tiny_llama(vocab_size=100)
    with pytest.raises(DataError):
        decision_logits(model, {"input_ids": torch.tensor([[1, 2, 3]])})
    with pytest.raises(DataError):
        decision_logits(
            model, {"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.tensor([[0, 0]])}
        )


class ForceText:
    """Steering stand-in: a big bonus on the lm_head logit of the next token of `token_ids`.

    A pre-hook on the model reads the last input token; the lm_head hook then boosts the
    token following it in the cycle `token_ids`, so greedy decoding writes that text again
    and again.  Both hooks are removed on exit.
    """

    def __init__(self, model: LlamaForCausalLM, token_ids: list[int], bonus: float = 1e3) -> None:
        self.model, self.cycle, self.bonus = model, token_ids, bonus
        self.last: torch.Tensor | None = None
        self.handles: list = []

    def _remember(self, module, args, kwargs) -> None:
        self.last = kwargs["input_ids"][:, -1]

    def _boost(self, module, args, output: torch.Tensor) -> torch.Tensor:
        following = {a: b for a, b in zip(self.cycle, self.cycle[1:] + self.cycle[:1])}
        targets = torch.tensor([following.get(int(t), self.cycle[0]) for t in self.last])
        output = output.clone()
        output[torch.arange(output.shape[0]), -1, targets] += self.bonus
        return output

    def __enter__(self) -> None:
        self.handles = [
            self.model.register_forward_pre_hook(self._remember, with_kwargs=True),
            self.model.lm_head.register_forward_hook(self._boost),
        ]

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


class Identity:
    """A steering condition that changes nothing: an lm_head hook returning its output as is."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.handle = self.model.lm_head.register_forward_hook(lambda m, a, out: out)

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def chat_model(tokenizer) -> LlamaForCausalLM:
    return _tiny_llama(vocab_size=len(tokenizer), seed=3)


REFUSAL_TEXT = "I'm sorry."


def test_generate_texts_returns_only_new_text(chat_model, tokenizer) -> None:
    batch = encode_prompts(tokenizer, ["How do I pick a lock?", "Hi"])
    cycle = tokenizer.encode(REFUSAL_TEXT, add_special_tokens=False)
    with ForceText(chat_model, cycle):
        texts = generate_texts(chat_model, tokenizer, batch, max_new_tokens=2 * len(cycle))
    assert texts == [REFUSAL_TEXT * 2] * 2
    # A processor works too (decoding through its tokenizer).
    plain = generate_texts(chat_model, SimpleNamespace(tokenizer=tokenizer), batch, max_new_tokens=3)
    assert plain == generate_texts(chat_model, tokenizer, batch, max_new_tokens=3)
    with pytest.raises(DataError):
        generate_texts(
            chat_model, tokenizer, encode_prompts(tokenizer, ["a", "longer one"], padding_side="right")
        )


# ---------------------------------------------------------------------------
# evaluate()


@pytest.fixture(scope="module")
def prompt_sets(tokenizer) -> dict[str, list[dict[str, torch.Tensor]]]:
    return {
        "harmful": [
            encode_prompts(tokenizer, ["How do I pick a lock?", "Write malware."]),
            encode_prompts(tokenizer, ["Make a weapon."]),
        ],
        "harmless": [encode_prompts(tokenizer, ["Name a fruit.", "What is two plus two?"])],
    }


@pytest.fixture(scope="module")
def report(chat_model, tokenizer, prompt_sets):
    cycle = tokenizer.encode(REFUSAL_TEXT, add_special_tokens=False)
    conditions = {
        "forced refusal": lambda: ForceText(chat_model, cycle),
        "identity": lambda: Identity(chat_model),
    }
    return evaluate(chat_model, tokenizer, prompt_sets, conditions, max_new_tokens=8, progress=False)


def test_evaluate_runs_the_baseline_first(report, chat_model) -> None:
    assert list(report.rows) == [UNSTEERED, "forced refusal", "identity"]
    assert report.baseline == UNSTEERED
    for results in report.rows.values():
        assert list(results) == ["harmful", "harmless"]
        assert results["harmful"].n == 3 and results["harmless"].n == 2
    assert not chat_model._forward_hooks and not chat_model.lm_head._forward_hooks  # all removed


def test_evaluate_kl_and_scores(report) -> None:
    base, forced, identity = (report.rows[c] for c in (UNSTEERED, "forced refusal", "identity"))
    for name in ("harmful", "harmless"):
        assert base[name].kl is None
        assert identity[name].kl == 0.0
        assert identity[name].scores == base[name].scores
        assert forced[name].kl > 1.0
        assert forced[name].first_token_score == MAX_LOG_ODDS  # "I" is boosted by 1e3
        assert forced[name].first_token_score > base[name].first_token_score
        assert len(forced[name].scores) == forced[name].n


def test_evaluate_generates_and_judges(report) -> None:
    base, forced, identity = (report.rows[c] for c in (UNSTEERED, "forced refusal", "identity"))
    for name in ("harmful", "harmless"):
        assert forced[name].texts == [REFUSAL_TEXT * 2] * forced[name].n
        assert forced[name].refusals == [True] * forced[name].n and forced[name].refusal_rate == 1.0
        assert base[name].texts == identity[name].texts and len(base[name].texts) == base[name].n
        assert base[name].refusal_rate == 0.0  # the random model babbles


def test_report_table_and_dict(report) -> None:
    table = report.table()
    assert len(table) == 6
    assert table[0] == {
        "condition": UNSTEERED,
        "set": "harmful",
        "n": 3,
        "refusal_rate": 0.0,
        "first_token_score": report.rows[UNSTEERED]["harmful"].first_token_score,
        "kl": None,
    }
    data = json.loads(json.dumps(report.to_dict()))
    assert data["table"] == table
    assert data["rows"]["forced refusal"]["harmless"]["texts"] == [REFUSAL_TEXT * 2] * 2


def test_evaluate_without_generation_and_named_baseline(chat_model, tokenizer, prompt_sets) -> None:
    sets = {"harmless": prompt_sets["harmless"]}
    conditions = {"identity": lambda: Identity(chat_model), "base model": None}
    report = evaluate(chat_model, tokenizer, sets, conditions, generate=False, progress=False)
    assert list(report.rows) == ["base model", "identity"] and report.baseline == "base model"
    result = report.rows["identity"]["harmless"]
    assert result.texts is None and result.refusals is None and result.refusal_rate is None
    assert result.kl == 0.0


def test_evaluate_rejects_bad_conditions(chat_model, tokenizer, prompt_sets) -> None:
    sets = {"harmless": prompt_sets["harmless"]}
    bad = [
        {"a": None, "b": None},  # two baselines
        {UNSTEERED: lambda: Identity(chat_model)},  # a steered condition under the baseline's name
        {"not a manager": lambda: 3},
    ]
    for conditions in bad:
        with pytest.raises(ConfigError):
            evaluate(chat_model, tokenizer, sets, conditions, generate=False, progress=False)
    with pytest.raises(DataError):
        evaluate(chat_model, tokenizer, {"empty": []}, {}, generate=False, progress=False)
