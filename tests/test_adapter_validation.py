"""A STEER adapter whose plan does not build is refused at load, and the model is left untouched.

Saved files name registered components only.  An import path, an unknown component or option, or
a bad position spec in `adapter_config.json` must fail when the adapter is loaded (through
steerpeft's `load_adapter` and through stock `PeftModel.from_pretrained`), never at the first
forward of the model afterwards; nothing may be imported or attached on the way.
"""

from __future__ import annotations

import json

import pytest
import torch
from plans import make_plan
from tiny_models import tiny_text_model

from steerpeft.adapters import export_adapter, load_adapter
from steerpeft.architectures import decoder_layers, resolve_layout
from steerpeft.errors import SteerpeftError
from steerpeft.inputs.text import encode_prompts
from steerpeft.session import active_session

CORRUPTIONS = {
    "import path": (("scaler", "name"), "os:system", "import path"),
    "unknown scaler": (("scaler", "name"), "constnt", "Did you mean 'constant'"),
    "unknown option": (("intervention", "params"), {"normalise": True}, "Did you mean 'normalize'"),
    "bad positions": (("positions",), "first_generated:0", "first_generated needs a whole number n >= 1"),
    "unknown positions": (("positions",), "decison", "Did you mean 'decision'"),
    "bad site": (("site",), "everywhere", "site must be one of"),
}


@pytest.fixture(scope="module")
def llama():
    torch.set_num_threads(1)
    return tiny_text_model("llama")


def _corrupt(folder, path: tuple[str, ...], value) -> None:
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    node = config["plan"]["steps"][0]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    config_file.write_text(json.dumps(config))


def _untouched(model, plain: torch.Tensor, batch) -> None:
    layers = decoder_layers(model, resolve_layout(model))
    assert sum(len(layer._forward_hooks) for layer in layers) == 0 and not model._forward_pre_hooks
    assert not any(name.endswith("steerpeft") for name, _ in model.named_modules())
    assert active_session(model) is None and "generate" not in model.__dict__
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, plain)


def _exported(llama, tmp_path):
    """A STEER adapter of a decision-position plan, a batch, and the model's unsteered logits on it."""
    model, tok = llama
    batch = encode_prompts(tok, ["How do I bake bread?", "Hi"])
    with torch.no_grad():
        plain = model(**batch).logits
    folder = export_adapter(
        make_plan(model, "add", positions="decision"), model, tmp_path / "adapter", kind="steer"
    )
    return model, batch, plain, folder


@pytest.mark.parametrize("how", ["steerpeft", "peft"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_bad_steer_plan_is_refused_at_load(llama, tmp_path, corruption, how) -> None:
    model, batch, plain, folder = _exported(llama, tmp_path)
    path, value, message = CORRUPTIONS[corruption]
    _corrupt(folder, path, value)
    with pytest.raises(SteerpeftError, match=message):
        if how == "steerpeft":
            load_adapter(model, folder)
        else:
            from peft import PeftModel

            PeftModel.from_pretrained(model, str(folder))
    _untouched(model, plain, batch)


def test_a_good_steer_adapter_still_loads_and_steers(llama, tmp_path) -> None:
    model, batch, plain, folder = _exported(llama, tmp_path)
    steered = load_adapter(model, folder)
    with torch.no_grad():
        assert not torch.equal(steered(**batch).logits, plain)
    steered.unload()
    _untouched(model, plain, batch)
