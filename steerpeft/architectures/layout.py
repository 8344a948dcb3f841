"""`ModelLayout` and `resolve_layout`: where one model's language backbone lives, found and checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from steerpeft.architectures.known import (
    ATTN_OUT,
    ATTN_OUT_CANDIDATES,
    FIX_HINT,
    KNOWN_ARCHITECTURES,
    LAYER_CANDIDATES,
    MLP_OUT,
    MLP_OUT_CANDIDATES,
    KnownPaths,
)
from steerpeft.architectures.modules import get_module, text_config, unwrap_model
from steerpeft.errors import ArchitectureError, ShapeError


@dataclass(frozen=True)
class ModelLayout:
    """Where the language backbone of one model lives, as exact dotted module paths.

    All paths are relative to the unwrapped transformers model (see :func:`unwrap_model`).
    ``residual_writer_names`` are the per-layer sub-paths of the modules whose outputs are added
    to the residual stream; empty when unknown for this architecture.
    """

    family: str
    layers_path: str
    embedding_path: str
    num_layers: int
    hidden_size: int
    post_norm: bool
    image_token_id: int | None
    video_token_id: int | None
    residual_writer_names: tuple[str, ...] = (ATTN_OUT, MLP_OUT)

    def _check_index(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ShapeError(f"layer index must be an int, got {index!r} ({type(index).__name__})")
        if index < 0:
            raise ShapeError(
                f"layer index {index} is negative; use an explicit index in 0..{self.num_layers - 1} "
                f"({self.family} has {self.num_layers} decoder layers)"
            )
        if index >= self.num_layers:
            raise ShapeError(
                f"layer index {index} is out of range: {self.family} has {self.num_layers} decoder layers, "
                f"valid indexes are 0..{self.num_layers - 1}"
            )

    def layer_path(self, index: int) -> str:
        """Exact path of decoder layer ``index`` (``"model.layers.3"``); negatives are refused."""
        self._check_index(index)
        return f"{self.layers_path}.{index}"

    def residual_writer_paths(self, index: int) -> list[str]:
        """Full paths of the attention-output and MLP-output projections of layer ``index``."""
        layer = self.layer_path(index)
        if not self.residual_writer_names:
            raise ArchitectureError(
                f"the modules that write the residual stream are not known for {self.family!r} "
                "(expected e.g. self_attn.o_proj and mlp.down_proj in each layer); hook the layer "
                f"outputs ({layer}) instead"
            )
        return [f"{layer}.{name}" for name in self.residual_writer_names]


def decoder_layers(model: nn.Module, layout: ModelLayout) -> nn.ModuleList:
    """The decoder ``nn.ModuleList`` that ``layout`` points at, checked against the layout."""
    layers = get_module(model, layout.layers_path)
    if not isinstance(layers, nn.ModuleList) or len(layers) != layout.num_layers:
        raise ArchitectureError(
            f"{layout.layers_path!r} is not a ModuleList of {layout.num_layers} layers in this model; "
            "the layout was resolved for a different model"
        )
    return layers


def resolve_layout(
    model: nn.Module, layers_path: str | None = None, embedding_path: str | None = None
) -> ModelLayout:
    """Find the decoder layers and token embedding of ``model``'s language backbone.

    Hand-given ``layers_path`` / ``embedding_path`` take precedence over the table and probing,
    but are validated the same way. Raises :class:`ArchitectureError` naming the fix when the
    backbone cannot be found.
    """
    root = unwrap_model(model)
    tconf = text_config(root)
    top_config = root.config
    family = str(getattr(top_config, "model_type", "") or type(root).__name__)
    expected_layers = _int_attr(tconf, "num_hidden_layers")
    hidden_size = _int_attr(tconf, "hidden_size")
    known = KNOWN_ARCHITECTURES.get(family)
    prefix = _base_prefix(root)

    if layers_path is not None:
        layers = _validate_layers(root, layers_path, expected_layers, given=True)
    elif known is not None:
        try:
            layers_path = prefix + known.layers
            layers = _validate_layers(root, layers_path, expected_layers, given=False)
        except ArchitectureError as err:  # e.g. a transformers release moved the modules
            try:
                layers_path, layers = _probe_layers(root, family, expected_layers)
            except ArchitectureError:
                raise err from None
    else:
        layers_path, layers = _probe_layers(root, family, expected_layers)

    if embedding_path is None:
        table_path = prefix + known.embedding if known is not None else None
        if table_path is not None and _exists(root, table_path):
            embedding_path = table_path
        else:
            embedding_path = _find_embedding(root, layers_path)
    embedding, embedding_dim = _validate_embedding(root, embedding_path, hidden_size)
    _check_adjacent(root, layers_path, embedding, embedding_path)

    if hidden_size is None:
        hidden_size = embedding_dim
    writers = _writer_names(layers[0], known)
    return ModelLayout(
        family=family,
        layers_path=layers_path,
        embedding_path=embedding_path,
        num_layers=len(layers),
        hidden_size=hidden_size,
        post_norm=_has_post_norm(layers[0]),
        image_token_id=_token_id(top_config, "image_token_id", "image_token_index"),
        video_token_id=_token_id(top_config, "video_token_id", "video_token_index"),
        residual_writer_names=writers,
    )


# --------------------------------------------------------------------------- helpers


def _int_attr(config: Any, name: str) -> int | None:
    value = getattr(config, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _token_id(config: Any, *names: str) -> int | None:
    for name in names:
        value = _int_attr(config, name)
        if value is not None:
            return value
    return None


def _base_prefix(root: nn.Module) -> str:
    """``"model."`` for head classes that wrap the base model, ``""`` for a bare base model."""
    prefix_name = getattr(root, "base_model_prefix", "")
    base = getattr(root, prefix_name, None) if prefix_name else None
    return f"{prefix_name}." if isinstance(base, nn.Module) and base is not root else ""


def _exists(root: nn.Module, path: str) -> bool:
    try:
        get_module(root, path)
    except ArchitectureError:
        return False
    return True


def _module_lists(root: nn.Module) -> str:
    found = [
        f"{name} ({len(m)})" for name, m in root.named_modules() if isinstance(m, nn.ModuleList) and len(m)
    ]
    return ", ".join(found[:12]) or "none"


def _validate_layers(root: nn.Module, path: str, expected: int | None, given: bool) -> nn.ModuleList:
    source = "layers_path" if given else f"the known path for {getattr(root.config, 'model_type', '?')!r}"
    try:
        layers = get_module(root, path)
    except ArchitectureError as err:
        raise ArchitectureError(f"{source} {path!r} is wrong: {err}. {FIX_HINT}") from None
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ArchitectureError(
            f"{source} {path!r} is a {type(layers).__name__}, not a non-empty nn.ModuleList of decoder "
            f"layers. ModuleLists in this model: {_module_lists(root)}. {FIX_HINT}"
        )
    if expected is not None and len(layers) != expected:
        raise ArchitectureError(
            f"{source} {path!r} holds {len(layers)} modules but the text config has "
            f"num_hidden_layers={expected}. ModuleLists in this model: {_module_lists(root)}. {FIX_HINT}"
        )
    return layers


def _probe_layers(root: nn.Module, family: str, expected: int | None) -> tuple[str, nn.ModuleList]:
    for path in LAYER_CANDIDATES:
        try:
            layers = get_module(root, path)
        except ArchitectureError:
            continue
        if (
            isinstance(layers, nn.ModuleList)
            and len(layers) > 0
            and (expected is None or len(layers) == expected)
        ):
            return path, layers
    raise ArchitectureError(
        f"unknown architecture {family!r} ({type(root).__name__}): no decoder layer list with "
        f"num_hidden_layers={expected} at any known path ({', '.join(LAYER_CANDIDATES)}). "
        f"ModuleLists in this model: {_module_lists(root)}. {FIX_HINT}"
    )


def _find_embedding(root: nn.Module, layers_path: str) -> str:
    """The token embedding: ``embed_tokens`` next to the layers, else ``get_input_embeddings()``."""
    parent = layers_path.rpartition(".")[0]
    sibling = f"{parent}.embed_tokens" if parent else "embed_tokens"
    try:
        if _unwrap_layer(get_module(root, sibling), nn.Embedding) is not None:
            return sibling
    except ArchitectureError:
        pass
    getter = getattr(root, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if isinstance(embedding, nn.Module):
        for name, module in root.named_modules():
            if module is embedding:  # identity, not a name match
                return name
    raise ArchitectureError(
        f"could not find the token embedding of {type(root).__name__} (no {sibling!r}, and "
        f"get_input_embeddings() is not a submodule). {FIX_HINT}"
    )


def _unwrap_layer(module: nn.Module, kind: type[nn.Module]) -> nn.Module | None:
    """``module`` if it is a ``kind``, or the ``kind`` a peft layer wraps (LoRA's ``base_layer``,
    ``ModulesToSaveWrapper.original_module``); None otherwise."""
    for _ in range(4):
        if isinstance(module, kind):
            return module
        inner = getattr(module, "base_layer", None) or getattr(module, "original_module", None)
        if not isinstance(inner, nn.Module):
            return None
        module = inner
    return None


def _validate_embedding(root: nn.Module, path: str, hidden_size: int | None) -> tuple[nn.Module, int]:
    """The module at ``path`` (possibly a peft wrapper) and its embedding dimension."""
    try:
        module = get_module(root, path)
    except ArchitectureError as err:
        raise ArchitectureError(f"embedding_path {path!r} is wrong: {err}. {FIX_HINT}") from None
    embedding = _unwrap_layer(module, nn.Embedding)
    if embedding is None:
        raise ArchitectureError(
            f"embedding_path {path!r} is a {type(module).__name__}, not an nn.Embedding. {FIX_HINT}"
        )
    if hidden_size is not None and embedding.embedding_dim != hidden_size:
        raise ArchitectureError(
            f"embedding_path {path!r} has dimension {embedding.embedding_dim} but the text config has "
            f"hidden_size={hidden_size}: it is not the language model's token embedding. {FIX_HINT}"
        )
    return module, embedding.embedding_dim


def _check_adjacent(root: nn.Module, layers_path: str, embedding: nn.Module, embedding_path: str) -> None:
    """Decoder layers must share their parent module with the token embedding.

    This is what tells the language model's layers from a vision tower's, which can have the
    same length.
    """
    parent_path = layers_path.rpartition(".")[0]
    parent = get_module(root, parent_path)
    if not any(module is embedding for module in parent.modules()):
        raise ArchitectureError(
            f"layers {layers_path!r} and token embedding {embedding_path!r} are not in the same "
            "module, so one of them is not the language model's (a vision tower's?). "
            f"ModuleLists in this model: {_module_lists(root)}. {FIX_HINT}"
        )


def _writer_names(layer: nn.Module, known: KnownPaths | None) -> tuple[str, ...]:
    """Sub-paths of the attention-output and MLP-output projections in one layer, if present."""
    if known is not None:
        candidates: list[tuple[str, ...]] = [(name,) for name in known.writers]
    else:
        candidates = [ATTN_OUT_CANDIDATES, MLP_OUT_CANDIDATES]
    names: list[str] = []
    for options in candidates:
        found = next((name for name in options if _is_linear_at(layer, name)), None)
        if found is None:
            return ()
        names.append(found)
    return tuple(names)


def _is_linear_at(layer: nn.Module, name: str) -> bool:
    try:
        module = layer.get_submodule(name)
    except AttributeError:
        return False
    return _unwrap_layer(module, nn.Linear) is not None


def _has_post_norm(layer: nn.Module) -> bool:
    """True when the layer normalises sub-layer outputs before adding them (Gemma2/3, OLMo2)."""
    return isinstance(getattr(layer, "post_feedforward_layernorm", None), nn.Module)
