"""`torch.compile` through transformers' own path (static cache + CompileConfig) keeps steering exact.

Decoding steps must compile into one graph per generation shape: no graph break (a host sync
such as `int(cache.get_seq_length())`) and no recompile per step (a Python int read from the
step's column).  The `eager` dynamo backend traces exactly as inductor would, without a C compiler.
"""

from __future__ import annotations

import pytest
import torch
from plans import make_plan
from tiny_models import tiny_text_model
from torch._dynamo.utils import counters
from transformers import CompileConfig

from steerpeft.inputs.text import encode_prompts

PROMPTS = ["Hi", "Tell me a long story about a brave little robot"]


@pytest.fixture(scope="module")
def llama():
    return tiny_text_model("llama")


def _generate(model, batch, **options) -> torch.Tensor:
    out = model.generate(
        **batch, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
        pad_token_id=0, **options,
    )
    return torch.stack(out.logits, 1)


def _compiled(model, batch) -> torch.Tensor:
    config = CompileConfig(backend="eager", fullgraph=False)
    config._compile_all_devices = True  # transformers compiles only on accelerators unless told
    model.__dict__.pop("_compiled_call", None)
    return _generate(model, batch, cache_implementation="static", compile_config=config)


@pytest.mark.parametrize(("kind", "positions"), [("add", "all"), ("ablate", "all"), ("add", "decision"),
                                                 ("add", "generated")])
def test_compiled_static_cache_generation_is_exact_without_breaks_or_recompiles(llama, kind, positions):
    model, tok = llama
    batch = encode_prompts(tok, PROMPTS, padding_side="left")
    plan = make_plan(model, kind, layers=(0, 2), positions=positions, alpha=3.0)
    with torch.no_grad():
        plain = _generate(model, batch)
        with plan.apply(model):
            eager = _generate(model, batch)
            static = _generate(model, batch, cache_implementation="static", disable_compile=True)
            torch._dynamo.reset()
            counters.clear()
            compiled = _compiled(model, batch)
            again = _compiled(model, batch)
    assert (eager - plain).abs().max() > 1e-3, "the plan must steer"
    assert (static - eager).abs().max() < 1e-5
    assert (compiled - eager).abs().max() < 1e-5
    assert (again - eager).abs().max() < 1e-5
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 2, "one graph for the decoding steps (per compile call)"
