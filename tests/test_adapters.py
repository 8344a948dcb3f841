"""PEFT adapters: exports reproduce the plan, load with stock tools, refuse what does not fit."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from plans import make_plan, random_direction
from safetensors.torch import load_file
from tiny_models import tiny_text_model, tiny_vlm

import steerpeft  # noqa: F401  (registers STEER)
from steerpeft.adapters import (
    UploadRequest,
    export_adapter,
    load_adapter,
    push_to_hub,
    render_card,
)
from steerpeft.adapters import steer as steer_method
from steerpeft.architectures import decoder_layers, get_module, resolve_layout
from steerpeft.errors import AdapterError, ConfigError, ShapeError
from steerpeft.interventions import AddDirection
from steerpeft.plan import EMBEDDING, Plan, SteeringStep
from steerpeft.provenance import model_info
from steerpeft.scalers import ConditionalScaler, TrustRegionScaler
from steerpeft.scalers.trust_region import LayerRegion
from steerpeft.session import active_session

TOL = 1e-4
FAMILIES = ["llama", "qwen2", "gemma2", "qwen2_vl", "idefics3"]
PROMPTS = ["Hello there, how are you today?", "Hi"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


# --------------------------------------------------------------------------- helpers

_CACHE: dict[str, tuple] = {}


def _pristine(family: str):
    if family not in _CACHE:
        if family in ("qwen2_vl", "idefics3"):
            model, processor = tiny_vlm(family)
            tokenizer = processor.tokenizer
        else:
            model, tokenizer = tiny_text_model(family)
        _CACHE[family] = (model, tokenizer)
    return _CACHE[family]


def fresh(family: str):
    """A new copy of the family's tiny model (same weights every time) and its tokenizer."""
    model, tokenizer = _pristine(family)
    return copy.deepcopy(model), tokenizer


def batch_for(tokenizer) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "left"
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def steered(plan, model, batch) -> torch.Tensor:
    with torch.no_grad(), plan.apply(model):
        return model(**batch).logits


def real_diff(a: torch.Tensor, b: torch.Tensor, batch) -> float:
    """Max difference over real (non-padding) tokens: padding positions are never seen by real ones."""
    mask = batch["attention_mask"].bool()
    return (a - b)[mask].abs().max().item()


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def assert_clean(model) -> None:
    """No hooks, no session, no generate wrapper, no adapter modules left."""
    assert hook_count(model) == 0
    assert active_session(model) is None and "generate" not in model.__dict__
    names = [n for n, _ in model.named_modules()]
    assert not [n for n in names if "steerpeft" in n or "lora_" in n]


def meta(folder) -> dict:
    return json.loads((folder / "steerpeft.json").read_text())


def trust_region_plan(model, batch, layer: int = 1, positions: str = "all") -> Plan:
    """A calibrated-by-hand trust-region step whose gate varies with the input."""
    layout = resolve_layout(model)
    vector = random_direction(layout.hidden_size, seed=3)
    unit = vector / vector.norm()
    captured = {}
    handle = decoder_layers(model, layout)[layer].register_forward_hook(
        lambda m, a, o: captured.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    projection = captured["h"][batch["attention_mask"].bool()] @ unit
    scaler = TrustRegionScaler(tau=0.0, recenter="shift")
    offsets = torch.randn(3, layout.hidden_size, generator=torch.Generator().manual_seed(5)) * 0.05
    offsets[0] = 0
    scaler.regions[layer] = LayerRegion(unit, float(projection.max()) + 0.5, float(projection.min()) - 0.5,
                                        float(vector.norm()), offsets)
    step = SteeringStep({layer: vector}, AddDirection(normalize=True), scaler, positions, "trust")
    return Plan([step], model_info(model, layout))


def writer_ablation_logits(model, batch, plan) -> torch.Tensor:
    """Reference of weight orthogonalization: project u out of every residual writer's output."""
    layout = resolve_layout(model)
    step = plan.steps[0]
    handles = []
    for layer, direction in step.directions.items():
        unit = direction / direction.norm()
        paths = [layout.embedding_path] if layer == EMBEDDING else layout.residual_writer_paths(layer)
        for path in paths:
            handles.append(get_module(model, path).register_forward_hook(
                lambda m, a, o, u=unit: o - (o @ u).unsqueeze(-1) * u))
    try:
        return logits(model, batch)
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------- registration


def test_steer_is_registered_idempotently_and_version_guarded(monkeypatch):
    import peft
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )
    from peft.utils import PeftType

    steer_method.register()
    steer_method.register()
    assert PeftType.STEER.value == steer_method.STEER_PEFT_TYPE and "steerpeft" in PeftType.STEER.value
    assert PeftType(steer_method.STEER_PEFT_TYPE) is PeftType.STEER
    assert PEFT_TYPE_TO_CONFIG_MAPPING[steer_method.STEER_PEFT_TYPE] is steer_method.SteerConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.STEER] is steer_method.SteerModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.STEER] == "steerpeft_"
    assert list(PeftType).count(PeftType.STEER) == 1
    for version in ("0.20.1", "0.22.0"):
        monkeypatch.setattr(peft, "__version__", version)
        with pytest.raises(AdapterError, match=r"peft>=0\.21,<0\.22"):
            steer_method.register()


# --------------------------------------------------------------------------- exactness per family


CASES = [("add", "auto"), ("add", "steer"), ("ablate", "auto")]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("plan_kind", "export_kind"), CASES)
def test_export_load_reproduces_plan_and_unloads_cleanly(family, plan_kind, export_kind, tmp_path):
    model, tokenizer = fresh(family)
    batch = batch_for(tokenizer)
    layout = resolve_layout(model)
    if plan_kind == "add":
        plan = make_plan(model, "add", layers=(1,), alpha=2.0)
    else:
        plan = make_plan(model, "ablate", layers=(EMBEDDING, *range(layout.num_layers)), alpha=1.0)
    base = logits(model, batch)
    reference = steered(plan, model, batch)
    assert real_diff(reference, base, batch) > 1e-3, "the plan must change the logits"

    folder = export_adapter(plan, model, tmp_path / "adapter", kind=export_kind)
    expected = "lora" if (plan_kind, export_kind) == ("add", "auto") and not layout.post_norm else "steer"
    assert meta(folder)["kind"] == expected
    assert meta(folder)["exact"] is True

    loaded = load_adapter(fresh(family)[0], folder)
    assert real_diff(logits(loaded, batch), reference, batch) < TOL
    with loaded.disable_adapter():
        assert torch.equal(logits(loaded, batch), base)
    assert real_diff(logits(loaded, batch), reference, batch) < TOL  # enabled again
    unloaded = loaded.unload()
    assert torch.equal(logits(unloaded, batch), base)
    assert_clean(unloaded)


def test_lora_addition_cannot_merge_into_bias_free_layers(tmp_path):
    model, _ = fresh("llama")
    folder = export_adapter(make_plan(model, "add", layers=(2,)), model, tmp_path / "a")
    assert meta(folder)["mergeable"] is False
    assert "Not mergeable" in (folder / "README.md").read_text()
    loaded = load_adapter(fresh("llama")[0], folder)
    with pytest.raises(RuntimeError, match="no bias"):
        loaded.merge_and_unload()


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_embedding_ablation_is_exact_mergeable_lora(family, tmp_path):
    model, tokenizer = fresh(family)
    batch = batch_for(tokenizer)
    plan = make_plan(model, "ablate", layers=(EMBEDDING,), alpha=1.0)
    reference = steered(plan, model, batch)
    folder = export_adapter(plan, model, tmp_path / "a")
    assert meta(folder)["kind"] == "lora" and meta(folder)["mergeable"] is True
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"].startswith("^(") and config["target_modules"].endswith(")$")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    layout = resolve_layout(model)
    a = tensors[f"base_model.model.{layout.embedding_path}.lora_embedding_A"]
    b = tensors[f"base_model.model.{layout.embedding_path}.lora_embedding_B"]
    assert a.shape == (1, model.get_input_embeddings().num_embeddings) and b.shape == (layout.hidden_size, 1)
    loaded = load_adapter(fresh(family)[0], folder)
    assert real_diff(logits(loaded, batch), reference, batch) < TOL
    merged = loaded.merge_and_unload()
    assert real_diff(logits(merged, batch), reference, batch) < TOL


def test_tied_embeddings_are_untied_before_an_embedding_lora_merges(tmp_path):
    from transformers import AutoModelForCausalLM

    base, tokenizer = fresh("llama")
    config = copy.deepcopy(base.config)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    tied = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    batch = batch_for(tokenizer)
    plan = make_plan(tied, "ablate", layers=(EMBEDDING,), alpha=1.0)
    reference = steered(plan, tied, batch)
    head = tied.lm_head.weight.detach().clone()
    folder = export_adapter(plan, tied, tmp_path / "a")
    assert "ties lm_head" in (folder / "README.md").read_text()
    target = copy.deepcopy(tied)
    loaded = load_adapter(target, folder)
    assert target.lm_head.weight is not target.model.embed_tokens.base_layer.weight
    assert real_diff(logits(loaded, batch), reference, batch) < TOL
    merged = loaded.merge_and_unload()
    assert torch.equal(merged.lm_head.weight, head)
    assert real_diff(logits(merged, batch), reference, batch) < TOL


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_layer_ablation_as_lora_is_weight_orthogonalization(family, tmp_path):
    model, tokenizer = fresh(family)
    batch = batch_for(tokenizer)
    layout = resolve_layout(model)
    plan = make_plan(model, "ablate", layers=(EMBEDDING, *range(layout.num_layers)), alpha=1.0)
    orthogonalized = writer_ablation_logits(model, batch, plan)
    with pytest.warns(UserWarning, match="weight orthogonalization"):
        folder = export_adapter(plan, model, tmp_path / "a", kind="lora")
    assert meta(folder)["exact"] is False and "weight orthogonalization" in (folder / "README.md").read_text()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert "mlp\\.down_proj" in config["target_modules"] and "visual" not in config["target_modules"]
    loaded = load_adapter(fresh(family)[0], folder)
    unmerged = logits(loaded, batch)
    assert real_diff(unmerged, orthogonalized, batch) < TOL
    # The hooked plan ablates layer outputs only, so it is not the same function (why auto picks STEER).
    assert real_diff(unmerged, steered(plan, model, batch), batch) > 1e-3
    merged = loaded.merge_and_unload()
    assert real_diff(logits(merged, batch), orthogonalized, batch) < TOL


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen2_vl", "idefics3"])
def test_writer_site_ablation_is_an_exact_mergeable_lora(family, tmp_path):
    """The ablation recipe's form (site="writers") equals its LoRA export, unmerged and merged."""
    model, tokenizer = fresh(family)
    batch = batch_for(tokenizer)
    layout = resolve_layout(model)
    plan = make_plan(model, "ablate", layers=(EMBEDDING, *range(layout.num_layers)), alpha=1.0)
    plan.steps[0].site = "writers"
    reference = steered(plan, model, batch)
    assert real_diff(reference, logits(model, batch), batch) > 1e-3
    folder = export_adapter(plan, model, tmp_path / "a")
    assert (
        meta(folder)["kind"] == "lora" and meta(folder)["exact"] is True and meta(folder)["mergeable"] is True
    )
    loaded = load_adapter(fresh(family)[0], folder)
    assert real_diff(logits(loaded, batch), reference, batch) < TOL
    merged = loaded.merge_and_unload()
    assert real_diff(logits(merged, batch), reference, batch) < TOL


def test_lora_is_refused_where_a_weight_delta_cannot_express_the_plan(tmp_path):
    gemma, _ = fresh("gemma2")
    with pytest.raises(AdapterError, match="post-norm"):
        export_adapter(make_plan(gemma, "ablate", layers=(0, 1)), gemma, tmp_path / "g", kind="lora")
    llama, tokenizer = fresh("llama")
    with pytest.raises(AdapterError, match="depends on the input"):
        export_adapter(trust_region_plan(llama, batch_for(tokenizer)), llama, tmp_path / "t", kind="lora")
    with pytest.raises(AdapterError, match="decision"):
        export_adapter(make_plan(llama, "add", positions="decision"), llama, tmp_path / "d", kind="lora")
    assert not (tmp_path / "g").exists() and not (tmp_path / "t").exists()
    with pytest.raises(ConfigError, match="kind"):
        export_adapter(make_plan(llama), llama, tmp_path / "x", kind="merged")


# --------------------------------------------------------------------------- STEER specifics


@pytest.mark.parametrize("positions", ["decision", "all", "first_generated:2", "generated"])
def test_steer_with_input_dependent_scaler_round_trips_generate(positions, tmp_path):
    model, tokenizer = fresh("llama")
    batch = batch_for(tokenizer)
    plan = trust_region_plan(model, batch, layer=1, positions=positions)
    kwargs = {"max_new_tokens": 4, "do_sample": False, "output_scores": True, "return_dict_in_generate": True,
              "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        plain = model.generate(**batch, **kwargs)
        with plan.apply(model):
            reference_logits = model(**batch).logits
            reference = model.generate(**batch, **kwargs)
    assert (torch.stack(reference.scores) - torch.stack(plain.scores)).abs().max() > 1e-4
    folder = export_adapter(plan, model, tmp_path / "a")
    assert meta(folder)["kind"] == "steer"
    loaded = load_adapter(fresh("llama")[0], folder)
    assert real_diff(logits(loaded, batch), reference_logits, batch) < TOL
    with torch.no_grad():
        result = loaded.generate(**batch, **kwargs)
    assert torch.equal(result.sequences, reference.sequences)
    assert (torch.stack(result.scores) - torch.stack(reference.scores)).abs().max() < TOL
    with loaded.disable_adapter(), torch.no_grad():
        assert torch.equal(torch.stack(loaded.generate(**batch, **kwargs).scores), torch.stack(plain.scores))


def test_steer_conditional_scaler_on_vlm_round_trips(tmp_path):
    model, tokenizer = fresh("qwen2_vl")
    batch = batch_for(tokenizer)
    layout = resolve_layout(model)
    vector = random_direction(layout.hidden_size, seed=7)
    unit = vector / vector.norm()
    captured = {}
    handle = decoder_layers(model, layout)[0].register_forward_hook(
        lambda m, a, o: captured.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    logits(model, batch)
    handle.remove()
    decision = captured["h"][:, -1] @ unit  # left padding: the last column is each row's decision position
    scaler = ConditionalScaler(alpha=4.0, condition_layer=0, threshold=float(decision.mean()))
    scaler._unit = unit
    plan = Plan([SteeringStep({1: vector}, AddDirection(), scaler, "all", "cast")], model_info(model, layout))
    reference = steered(plan, model, batch)
    changed = (reference - logits(model, batch)).abs().amax(dim=(1, 2)) > 1e-4
    assert int(changed.sum()) == 1, "the condition must steer exactly one of the two rows"
    folder = export_adapter(plan, model, tmp_path / "a")
    assert meta(folder)["kind"] == "steer"
    loaded = load_adapter(fresh("qwen2_vl")[0], folder)
    assert real_diff(logits(loaded, batch), reference, batch) < TOL


def test_combined_export_splits_additions_into_lora(tmp_path):
    from peft import PeftModel

    model, tokenizer = fresh("llama")
    batch = batch_for(tokenizer)
    addition = make_plan(model, "add", layers=(1,), alpha=2.0)
    trust = trust_region_plan(model, batch, layer=2, positions="decision")
    plan = Plan(addition.steps + trust.steps, addition.model_info)
    base = logits(model, batch)
    reference = steered(plan, model, batch)
    folder = export_adapter(plan, model, tmp_path / "a")
    assert meta(folder)["kind"] == "combined"
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (
        json.loads((folder / "steer" / "adapter_config.json").read_text())["peft_type"]
        == steer_method.STEER_PEFT_TYPE
    )
    # Stock PEFT loads the LoRA part (the additions) on its own.
    stock = PeftModel.from_pretrained(fresh("llama")[0], str(folder))
    assert real_diff(logits(stock, batch), steered(addition, model, batch), batch) < TOL
    loaded = load_adapter(fresh("llama")[0], folder)
    assert real_diff(logits(loaded, batch), reference, batch) < TOL
    with loaded.disable_adapter():
        assert torch.equal(logits(loaded, batch), base)
    unloaded = loaded.unload()
    assert torch.equal(logits(unloaded, batch), base)
    assert_clean(unloaded)


def test_stacking_on_a_users_lora(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = fresh("llama")
    batch = batch_for(tokenizer)
    base = logits(model, batch)
    torch.manual_seed(11)
    user = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                            init_lora_weights=False))
    user_only = logits(user, batch)
    steer_plan = make_plan(model, "ablate", layers=(EMBEDDING, 0, 1, 2, 3))
    add_plan = make_plan(model, "add", layers=(2,), alpha=2.0)
    steer_reference = steered(steer_plan, user, batch)
    add_reference = steered(add_plan, user, batch)

    stacked = load_adapter(user, export_adapter(steer_plan, model, tmp_path / "steer"))
    assert real_diff(logits(stacked, batch), steer_reference, batch) < TOL
    with stacked.disable_adapter():
        assert torch.equal(logits(stacked, batch), base)  # the user's LoRA is off too
    restored = stacked.unload()
    assert restored is user and torch.equal(logits(restored, batch), user_only)
    assert hook_count(user) == 0

    both = load_adapter(user, export_adapter(add_plan, model, tmp_path / "lora"))
    assert both is user and sorted(both.base_model.active_adapters) == ["default", "steerpeft"]
    assert real_diff(logits(both, batch), add_reference, batch) < TOL
    with both.disable_adapter():
        assert torch.equal(logits(both, batch), base)


def test_lora_joins_a_transformers_integration_model_and_steer_adapters_stack(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tokenizer = fresh("llama")
    batch = batch_for(tokenizer)
    base = logits(model, batch)
    torch.manual_seed(3)
    get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
                   ).save_pretrained(str(tmp_path / "user"))
    user = fresh("llama")[0]
    user.load_adapter(str(tmp_path / "user"))
    add_plan = make_plan(model, "add", layers=(2,), alpha=2.0)
    reference = steered(add_plan, user, batch)
    result = load_adapter(user, export_adapter(add_plan, model, tmp_path / "add"))
    assert result is user and user.active_adapters() == ["default", "steerpeft"]
    assert real_diff(logits(user, batch), reference, batch) < TOL

    first = make_plan(model, "ablate", layers=(EMBEDDING, 1), seed=1)
    second = make_plan(model, "add", layers=(2,), alpha=1.0, seed=2, positions="decision")
    with torch.no_grad(), first.apply(model), second.apply(model):
        both_reference = model(**batch).logits
    first_folder = export_adapter(first, model, tmp_path / "first")
    stacked = load_adapter(load_adapter(fresh("llama")[0], first_folder),
                           export_adapter(second, model, tmp_path / "second"))
    assert stacked.base_model.active_adapters == ["default", "steering"]
    assert real_diff(logits(stacked, batch), both_reference, batch) < TOL
    with stacked.disable_adapter():
        assert torch.equal(logits(stacked, batch), base)
    stacked.delete_adapter("steering")
    assert real_diff(logits(stacked, batch), steered(first, model, batch), batch) < TOL
    with pytest.raises(AdapterError, match="already attached"):
        PeftModel.from_pretrained(stacked, str(first_folder))  # a second wrapper reusing the name
    unloaded = stacked.unload()
    assert torch.equal(logits(unloaded, batch), base)
    assert_clean(unloaded)


def test_steer_save_pretrained_and_transformers_load_adapter(tmp_path):
    from peft import PeftModel

    model, tokenizer = fresh("llama")
    batch = batch_for(tokenizer)
    plan = make_plan(model, "ablate", layers=(EMBEDDING, 1, 2))
    reference = steered(plan, model, batch)
    folder = export_adapter(plan, model, tmp_path / "a", kind="steer")
    keys = load_file(str(folder / "adapter_model.safetensors"))
    assert all(".steerpeft.steerpeft_tensors." in k for k in keys)
    loaded = load_adapter(fresh("llama")[0], folder)
    loaded.save_pretrained(str(tmp_path / "resaved"))
    resaved = load_file(str(tmp_path / "resaved" / "adapter_model.safetensors"))
    assert resaved.keys() == keys.keys() and all(torch.equal(resaved[k], keys[k]) for k in keys)
    again = PeftModel.from_pretrained(fresh("llama")[0], str(tmp_path / "resaved"))
    assert real_diff(logits(again, batch), reference, batch) < TOL
    # transformers renames checkpoint keys by the tuner prefix: exactly one key segment carries it.
    plain = fresh("llama")[0]
    info = plain.load_adapter(str(folder))
    assert not info.missing_keys and not info.unexpected_keys
    assert real_diff(logits(plain, batch), reference, batch) < TOL
    loaded.delete_adapter("default")
    assert hook_count(loaded.base_model.model) == 0


# --------------------------------------------------------------------------- without steerpeft

_NO_STEERPEFT = textwrap.dedent("""
    import json, sys, torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model_dir, add_dir, emb_dir, steer_dir, expected_path = sys.argv[1:6]
    expected = torch.load(expected_path)
    ids = expected["input_ids"]
    out = {}
    def run(m):
        with torch.no_grad():
            return m(input_ids=ids).logits
    def diff(a, b):
        return float((a - b).abs().max())
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    out["peft_add"] = diff(run(PeftModel.from_pretrained(base, add_dir)), expected["add"])
    plain = AutoModelForCausalLM.from_pretrained(model_dir)
    plain.load_adapter(add_dir)
    out["transformers_add"] = diff(run(plain), expected["add"])
    emb = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), emb_dir)
    out["peft_embedding"] = diff(run(emb), expected["embedding"])
    out["merged_embedding"] = diff(run(emb.merge_and_unload()), expected["embedding"])
    plain = AutoModelForCausalLM.from_pretrained(model_dir)
    plain.load_adapter(emb_dir)
    out["transformers_embedding"] = diff(run(plain), expected["embedding"])
    try:
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), steer_dir)
        out["steer_error"] = None
    except Exception as exc:
        out["steer_error"] = f"{type(exc).__name__}: {exc}"
    try:
        AutoModelForCausalLM.from_pretrained(model_dir).load_adapter(steer_dir)
        out["steer_transformers_error"] = None
    except Exception as exc:
        out["steer_transformers_error"] = f"{type(exc).__name__}: {exc}"
    out["steerpeft_imported"] = "steerpeft" in sys.modules
    print("RESULT" + json.dumps(out))
""")


def test_lora_exports_load_without_steerpeft_and_steer_says_what_is_missing(tmp_path):
    model, _ = fresh("llama")
    model.save_pretrained(str(tmp_path / "model"))
    ids = torch.randint(10, 1000, (2, 6), generator=torch.Generator().manual_seed(1))
    add_plan = make_plan(model, "add", layers=(1,), alpha=2.0)
    emb_plan = make_plan(model, "ablate", layers=(EMBEDDING,), alpha=1.0)
    export_adapter(add_plan, model, tmp_path / "add")
    export_adapter(emb_plan, model, tmp_path / "emb")
    export_adapter(add_plan, model, tmp_path / "steer", kind="steer")
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch.save({"input_ids": ids, "add": steered(add_plan, model, batch),
                "embedding": steered(emb_plan, model, batch)}, tmp_path / "expected.pt")
    args = [str(tmp_path / name) for name in ("model", "add", "emb", "steer", "expected.pt")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", _NO_STEERPEFT, *args], capture_output=True, text=True, timeout=300, env=env,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT"):])
    assert result["steerpeft_imported"] is False
    for key in (
        "peft_add", "transformers_add", "peft_embedding", "merged_embedding", "transformers_embedding",
    ):
        assert result[key] < TOL, (key, result)
    assert result["steer_error"] is not None and "pip install steerpeft" in result["steer_error"]
    assert "import steerpeft" in result["steer_error"]
    assert (
        result["steer_transformers_error"] is not None
        and "pip install steerpeft" in result["steer_transformers_error"]
    )


def test_import_steerpeft_registers_steer_when_peft_is_imported_later(tmp_path):
    model, _ = fresh("llama")
    model.save_pretrained(str(tmp_path / "model"))
    plan = make_plan(model, "add", layers=(1,), positions="decision")
    export_adapter(plan, model, tmp_path / "steer")
    ids = torch.randint(10, 1000, (1, 5), generator=torch.Generator().manual_seed(2))
    torch.save({"ids": ids, "logits": steered(plan, model, {"input_ids": ids})}, tmp_path / "expected.pt")
    script = textwrap.dedent("""
        import sys, torch
        import steerpeft
        assert "peft" not in sys.modules, "import steerpeft must not import peft"
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        expected = torch.load(sys.argv[3])
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2])
        with torch.no_grad():
            print("DIFF", float((model(input_ids=expected["ids"]).logits - expected["logits"]).abs().max()))
    """)
    args = [str(tmp_path / name) for name in ("model", "steer", "expected.pt")]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DIFF")]
    assert lines, proc.stderr[-3000:]
    assert float(lines[-1].split()[1]) < TOL


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def llama_adapters(tmp_path):
    model, _ = fresh("llama")
    model.config._name_or_path = "org/model-a"
    lora = export_adapter(make_plan(model, "add", layers=(3,)), model, tmp_path / "lora")
    steer = export_adapter(
        make_plan(model, "add", layers=(3,), positions="decision"), model, tmp_path / "steer"
    )
    assert meta(lora)["kind"] == "lora" and meta(steer)["kind"] == "steer"
    return lora, steer


def _llama(hidden: int = 32, layers: int = 4, name: str = "org/model-a"):
    from transformers import AutoModelForCausalLM

    base, _ = _pristine("llama")
    config = copy.deepcopy(base.config)
    config.hidden_size, config.num_hidden_layers, config.intermediate_size = hidden, layers, 2 * hidden
    config.layer_types = None
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    model.config._name_or_path = name
    return model


def test_loading_refuses_models_that_do_not_fit(llama_adapters):
    lora, steer = llama_adapters
    for folder in (lora, steer):
        with pytest.raises(ShapeError, match="hidden_size"):
            load_adapter(_llama(hidden=64), folder)
        with pytest.raises(ShapeError, match="num_layers"):
            load_adapter(_llama(layers=2), folder)
    # a LoRA without steerpeft's provenance: tensor shapes are still checked
    (lora / "steerpeft.json").unlink()
    with pytest.raises(ShapeError, match="hidden size"):
        load_adapter(_llama(hidden=64), lora)
    with pytest.raises(ShapeError, match="layer count"):
        load_adapter(_llama(layers=2), lora)


def test_loading_checks_the_base_model_id(llama_adapters):
    lora, steer = llama_adapters
    for folder in (lora, steer):
        with pytest.raises(AdapterError, match="org/model-b"):
            load_adapter(_llama(name="org/model-b"), folder)
        assert load_adapter(_llama(name="org/model-b"), folder, force=True) is not None
        assert load_adapter(_llama(name="/cache/models--org--model-a/snapshots/abc123"), folder) is not None


def test_loading_refuses_corrupt_files(llama_adapters):
    lora, steer = llama_adapters
    for folder in (lora, steer):
        data = (folder / "adapter_model.safetensors").read_bytes()
        (folder / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
        with pytest.raises(AdapterError, match="truncated or corrupt"):
            load_adapter(_llama(), folder)
    config = json.loads((lora / "adapter_config.json").read_text())
    config["peft_type"] = "NOT_A_METHOD"
    (lora / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="NOT_A_METHOD"):
        load_adapter(_llama(), lora)
    (lora / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match="missing"):
        load_adapter(_llama(), lora)


def test_failed_export_keeps_the_previous_folder(llama_adapters):
    lora, _ = llama_adapters
    before = sorted(p.name for p in lora.iterdir())
    model = _llama()
    with pytest.raises(AdapterError):
        export_adapter(make_plan(model, "add", positions="prompt"), model, lora, kind="lora")
    assert sorted(p.name for p in lora.iterdir()) == before


# --------------------------------------------------------------------------- card and hub


def test_model_card_records_provenance(llama_adapters):
    lora, steer = llama_adapters
    card = (lora / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\nbase_model: \"org/model-a\"")
    for text in ("| add | add | 3 | all | constant |", "scaler.alpha=2", "peft version", "steerpeft version",
                 "hidden size | 32", "decoder layers | 4", "license"):
        assert text in card
    assert "decision" in (steer / "README.md").read_text()
    model, _ = fresh("llama")
    plan = make_plan(model)
    plan.metadata = {
        "steps": {"add": {"selected_layers": [1], "layer_scores": [{"layer": 1, "score": 0.91}]}}
    }
    text = render_card(plan, "steer", {"license": "apache-2.0", "title": "Refusal steering"})
    assert "license: \"apache-2.0\"" in text and "# Refusal steering" in text and "| 1 | 0.91 |" in text


def test_push_to_hub_sends_exactly_the_adapter_folder(llama_adapters, tmp_path):
    lora, _ = llama_adapters
    sent: list[UploadRequest] = []
    result = push_to_hub(lora, "me/refusal-lora", token="hf_x", private=True,
                         upload=lambda request: sent.append(request) or "https://hub/me/refusal-lora")
    assert result == "https://hub/me/refusal-lora"
    (request,) = sent
    assert request.repo_id == "me/refusal-lora" and request.private and request.token == "hf_x"
    assert request.files == (
        "README.md", "adapter_config.json", "adapter_model.safetensors", "steerpeft.json",
    )
    assert request.commit_message == "Upload steerpeft lora adapter for org/model-a"
    with pytest.raises(ConfigError, match="repo_id"):
        push_to_hub(lora, "no-namespace", upload=sent.append)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="missing"):
        push_to_hub(tmp_path / "empty", "me/x", upload=sent.append)
    assert len(sent) == 1


def test_push_to_hub_default_uploader_uses_huggingface_hub(llama_adapters, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return "commit"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    lora, _ = llama_adapters
    assert push_to_hub(lora, "me/adapter", token="t") == "commit"
    assert calls[0] == ("init", "t")
    assert calls[1] == ("create_repo", {"repo_id": "me/adapter", "private": False, "repo_type": "model",
                                        "exist_ok": True})
    upload = calls[2][1]
    assert upload["repo_id"] == "me/adapter" and upload["folder_path"] == str(lora)
    assert upload["allow_patterns"] == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                        "steerpeft.json"]


def test_no_warnings_leak_from_registration():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steer_method.register()
