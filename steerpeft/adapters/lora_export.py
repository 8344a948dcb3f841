"""Plain-LoRA exports: the steering a weight delta expresses, loadable by stock PEFT and transformers.

Two forms, both rank 1 with `lora_alpha == r` (scaling 1):

- **Constant addition** at a decoder layer's output (`add`, constant scaler, positions `all`, a
  pre-norm model): the layer's MLP output projection (`mlp.down_proj`) writes straight into the
  residual stream at the end of the layer, so a LoRA bias on it adds the vector there
  (`lora_bias=True`, zero A/B, `lora_B.bias = alpha * v / scaling`).  Exact for every real token;
  padding positions also receive it, which no real token can see.  PEFT cannot merge a LoRA bias
  into a layer without a bias (Llama/Qwen `down_proj` have none), so these stay unmerged.
- **Directional ablation** (`ablate`, constant strength s, positions `all`): every residual writer
  becomes W' = (I - s u u^T) W, i.e. `lora_A = u^T W`, `lora_B = -s u`, on each listed layer's
  attention and MLP output projections, and on the token embedding
  (`lora_embedding_A = (E u)^T` of shape (1, vocab), `lora_embedding_B = -s u` of shape
  (hidden, 1), PEFT's layout).  At the embedding alone this equals steerpeft's ablation exactly.
  Over decoder layers it is *weight orthogonalization*, which is not what a steerpeft plan does:
  the plan removes u from each layer's *output*, but inside a layer the MLP reads the residual
  after attention has written to it, and with hooks that read still contains the attention
  output's u-component.  So layer ablation is exported as LoRA only on request (`kind="lora"`,
  with a warning and a note in the card); `kind="auto"` keeps it in STEER, which is exact.
  A step with `site="writers"` ablates at the writers' outputs instead (the `ablation` recipe
  does): that *is* weight orthogonalization, so it exports as an exact plain LoRA.
  Mergeable; with tied embeddings merging would also change `lm_head` (see `untie_embeddings`).

Module paths are exact (`target_modules` is an anchored regex of full paths), never suffixes:
VLMs have vision blocks with `mlp.down_proj` too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steerpeft.architectures import ModelLayout, get_module, unwrap_model
from steerpeft.errors import AdapterError
from steerpeft.plan import EMBEDDING, Plan, SteeringStep
from steerpeft.positions import AllTokens

__all__ = [
    "LoraPayload", "LoraSupport", "lora_payload", "lora_support", "plan_lora_support", "untie_embeddings",
]


@dataclass(frozen=True)
class LoraSupport:
    """Whether one step can be a LoRA: its form ("add", "ablate" or None), exactness, and why."""

    form: str | None
    exact: bool
    reason: str = ""


@dataclass
class LoraPayload:
    """What a LoRA export writes: the LoraConfig and the checkpoint tensors, plus card notes."""

    config: Any
    tensors: dict[str, torch.Tensor]
    exact: bool
    mergeable: bool
    notes: list[str] = field(default_factory=list)


def _is_constant(step: SteeringStep) -> bool:
    return getattr(step.scaler, "registry_name", "") == "constant"


def lora_support(step: SteeringStep, layout: ModelLayout) -> LoraSupport:
    """How (and whether) `step` is expressible as a plain LoRA on a model with `layout`."""
    kind = getattr(step.intervention, "registry_name", type(step.intervention).__name__)
    if not _is_constant(step):
        return LoraSupport(None, False, f"step {step.name!r}: its strength depends on the input "
                                        f"(scaler {step.scaler.registry_name!r}), which no weight delta "
                                        "expresses")
    if not isinstance(step.positions, AllTokens):
        return LoraSupport(None, False, f"step {step.name!r} steers only {step.positions} positions; a "
                                        "weight delta acts on every position")
    layers = set(step.directions)
    if kind == "add":
        if EMBEDDING in layers:
            return LoraSupport(
                None, False, f"step {step.name!r} adds at the embedding output (not exported as LoRA)"
            )
        if layout.post_norm:
            return LoraSupport(None, False, f"step {step.name!r}: on this post-norm model ({layout.family}) "
                                            "the MLP output is normalised before it joins the residual "
                                            "stream")
        if len(layout.residual_writer_names) < 2:
            return LoraSupport(None, False, f"the residual writers of {layout.family!r} are not known")
        return LoraSupport("add", True)
    if kind == "ablate":
        if layers == {EMBEDDING}:
            return LoraSupport("ablate", True)
        if layout.post_norm:
            return LoraSupport(None, False, f"step {step.name!r}: on this post-norm model ({layout.family}) "
                                            "sub-layer outputs are normalised before they join the residual "
                                            "stream, so projecting the writers does not ablate the stream")
        if len(layout.residual_writer_names) < 2:
            return LoraSupport(None, False, f"the residual writers of {layout.family!r} are not known")
        if step.site == "writers":
            return LoraSupport("ablate", True)
        return LoraSupport("ablate", False, (
            f"step {step.name!r} ablates at decoder layer outputs; as LoRA it becomes weight "
            "orthogonalization of every residual writer, which differs from the hooked plan because each "
            "layer's MLP reads the residual before the layer output is ablated"))
    return LoraSupport(None, False, f"step {step.name!r}: intervention {kind!r} depends on the hidden state "
                                    "in a way no weight delta expresses")


def plan_lora_support(plan: Plan, layout: ModelLayout) -> tuple[bool, bool, list[str]]:
    """(expressible, exact, reasons) for the whole plan as one LoRA."""
    supports = [lora_support(step, layout) for step in plan.steps]
    reasons = [s.reason for s in supports if s.reason]
    forms = [s.form for s in supports]
    if any(form is None for form in forms):
        return False, False, reasons
    if "ablate" in forms and len(forms) > 1:
        return False, False, reasons + ["a LoRA export holds either constant additions or one ablation step"]
    return True, all(s.exact for s in supports), reasons


def _unwrapped(model: nn.Module, path: str, kind: type[nn.Module]) -> Any:
    """The `kind` module at `path`, under any peft `base_layer` wrappers."""
    module = get_module(model, path)
    for _ in range(4):
        if isinstance(module, kind):
            return module
        module = getattr(module, "base_layer", None)
    raise AdapterError(f"{path} is not an {kind.__name__} layer; it cannot carry a LoRA.")


def _linear(model: nn.Module, path: str) -> nn.Linear:
    return _unwrapped(model, path, nn.Linear)


def _embedding(model: nn.Module, path: str) -> nn.Embedding:
    return _unwrapped(model, path, nn.Embedding)


def _strength(step: SteeringStep) -> float:
    return float(step.scaler.alpha)  # type: ignore[attr-defined]  (constant scaler, checked before)


def lora_payload(plan: Plan, model: nn.Module, layout: ModelLayout, model_id: str) -> LoraPayload:
    """Build the LoRA of `plan` (which `plan_lora_support` accepted) from `model`'s weights."""
    from peft import LoraConfig

    model = unwrap_model(model)
    ok, exact, reasons = plan_lora_support(plan, layout)
    if not ok:
        raise AdapterError("This plan cannot be exported as a plain LoRA: " + "; ".join(reasons)
                           + ". Use kind='steer' (or kind='auto').")
    tensors: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    targets: list[str] = []
    is_add = all(lora_support(s, layout).form == "add" for s in plan.steps)
    mergeable = True

    def linear_lora(path: str, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> None:
        prefix = f"base_model.model.{path}"
        tensors[f"{prefix}.lora_A.weight"] = a.float().contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b.float().contiguous()
        if bias is not None:
            tensors[f"{prefix}.lora_B.bias"] = bias.float().contiguous()
        targets.append(path)

    with torch.no_grad():
        if is_add:
            biases: dict[int, torch.Tensor] = {}
            for step in plan.steps:
                for layer, direction in step.directions.items():
                    raw = direction.detach().float().cpu()
                    vector = raw / raw.norm() if getattr(step.intervention, "normalize", False) else raw
                    biases[layer] = biases.get(layer, torch.zeros_like(vector)) + _strength(step) * vector
            for layer in sorted(biases):
                path = layout.residual_writer_paths(layer)[-1]  # the MLP output projection
                linear = _linear(model, path)
                if linear.bias is None:
                    mergeable = False
                linear_lora(path, torch.zeros(1, linear.in_features), torch.zeros(linear.out_features, 1),
                            biases[layer])  # scaling is 1, so the bias is alpha * v itself
            if not mergeable:
                notes.append("Not mergeable: the bias sits on `mlp.down_proj`, which has no bias in this "
                             "model, so PEFT refuses merge_and_unload ('Impossible to merge LoRA with "
                             "`lora_bias=True` because the base layer has no bias'). Use it unmerged.")
        else:
            step = plan.steps[0]
            strength = _strength(step)
            for layer in step.layers:
                raw = step.directions[layer].detach().float().cpu()
                unit = raw / raw.norm()
                b = (-strength * unit).unsqueeze(1)
                if layer == EMBEDDING:
                    embedding = _embedding(model, layout.embedding_path)
                    weight = embedding.weight.detach().float().cpu()
                    prefix = f"base_model.model.{layout.embedding_path}"
                    tensors[f"{prefix}.lora_embedding_A"] = (weight @ unit).unsqueeze(0).contiguous()
                    tensors[f"{prefix}.lora_embedding_B"] = b.contiguous()
                    targets.append(layout.embedding_path)
                    continue
                for path in layout.residual_writer_paths(layer):
                    weight = _linear(model, path).weight.detach().float().cpu()
                    linear_lora(path, (unit @ weight).unsqueeze(0), b, None)
            if EMBEDDING in step.directions:
                embedding = _embedding(model, layout.embedding_path)
                if _tied(model, embedding):
                    notes.append("The base model ties lm_head to the token embedding. Unmerged the adapter "
                                 "is exact; merging would change lm_head too unless it is untied first "
                                 "(steerpeft's load_adapter gives lm_head its own copy of the weight when it "
                                 "loads this adapter).")
            if not exact:
                notes.append("Layer ablation as LoRA is weight orthogonalization (every attention and MLP "
                             "output projection and the embedding project out the direction). It differs "
                             "from the hooked steerpeft plan, which ablates decoder layer outputs: inside a "
                             "layer the MLP reads the residual before the layer output is ablated. Export "
                             "with kind='steer' for the exact plan.")
    pattern = "^(" + "|".join(re.escape(path) for path in sorted(set(targets))) + ")$"
    config = LoraConfig(
        r=1,
        lora_alpha=1,
        lora_dropout=0.0,
        target_modules=pattern,
        bias="none",
        lora_bias=is_add,
        task_type="CAUSAL_LM",
        base_model_name_or_path=model_id or None,
        inference_mode=True,
    )
    return LoraPayload(config, tensors, exact, mergeable, notes)


def _tied(model: nn.Module, embedding: nn.Embedding) -> bool:
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    return output is not None and getattr(output, "weight", None) is embedding.weight


def untie_embeddings(model: nn.Module) -> bool:
    """Give lm_head its own copy of a tied embedding weight, so merging an embedding LoRA is exact.

    Returns True when something was untied.  The config's `tie_word_embeddings` is set to False so
    transformers does not tie them again.
    """
    model = unwrap_model(model)
    getter_in = getattr(model, "get_input_embeddings", None)
    getter_out = getattr(model, "get_output_embeddings", None)
    if not callable(getter_in) or not callable(getter_out):
        return False
    embedding, output = getter_in(), getter_out()
    if embedding is None or output is None:
        return False
    embedding = getattr(embedding, "base_layer", embedding)
    if getattr(output, "weight", None) is not getattr(embedding, "weight", None):
        return False
    output.weight = nn.Parameter(
        embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad
    )
    for config in (
        getattr(model, "config", None), getattr(getattr(model, "config", None), "text_config", None),
    ):
        if config is not None and getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False
    return True
