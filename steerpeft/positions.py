"""Which token positions a steering step touches.

A position spec is validated when it is built, never inside a forward pass.
Masks are computed per forward from the `ForwardContext`, which knows each
row's absolute columns, so specs stay exact under left or right padding and
with or without a KV cache (no "index -1 of every step").

Specs count from the prompt of the current call (see `steerpeft.session`): when
`generate` continues a filled cache (a second chat turn), `prompt` is the call's
new tokens, `decision` their last real token, `generated` and `first_generated`
count from the token after it, and `all` steers every token the call feeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from steerpeft.errors import ConfigError
from steerpeft.registry import suggest

if TYPE_CHECKING:
    from steerpeft.forward_context import ForwardContext


@dataclass(frozen=True)
class Positions:
    """Base class of position specs; subclasses define `mask`."""

    kind: ClassVar[str] = ""

    def mask(self, fc: ForwardContext) -> torch.Tensor | None:
        """[batch, seq] bool mask of positions to steer, or None when nothing is steered."""
        raise NotImplementedError

    def covers_chunk(self, fc: ForwardContext) -> bool:
        """True when every position of this chunk is steered, known without a kernel or a sync.

        Steps then use a scalar strength instead of a [batch, seq, 1] mask (the decoding fast path).
        """
        return False

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class AllTokens(Positions):
    """Every real (non-padding) token, prompt and generated."""

    kind: ClassVar[str] = "all"

    def mask(self, fc: ForwardContext) -> torch.Tensor | None:
        return fc.real_tokens

    def covers_chunk(self, fc: ForwardContext) -> bool:
        return fc.every_token_real


@dataclass(frozen=True)
class PromptTokens(Positions):
    """Real tokens of the prompt only; generated tokens are left alone."""

    kind: ClassVar[str] = "prompt"

    def mask(self, fc: ForwardContext) -> torch.Tensor | None:
        if fc.after_prompt or fc.first_column >= fc.prompt_width:
            return None  # a cached decoding step holds no prompt token
        return fc.real_tokens & (fc.columns < fc.prompt_width)

    def covers_chunk(self, fc: ForwardContext) -> bool:
        return fc.every_token_real and not fc.after_prompt and fc.last_column < fc.prompt_width


@dataclass(frozen=True)
class DecisionPosition(Positions):
    """The last prompt token of each row: its logits give the first generated token."""

    kind: ClassVar[str] = "decision"

    def mask(self, fc: ForwardContext) -> torch.Tensor | None:
        if fc.after_prompt or fc.first_column >= fc.prompt_width:
            return None
        return fc.columns == fc.last_prompt_column[:, None]


@dataclass(frozen=True)
class GeneratedTokens(Positions):
    """Generated tokens only (each is steered when it is fed back in)."""

    kind: ClassVar[str] = "generated"

    def mask(self, fc: ForwardContext) -> torch.Tensor | None:
        if fc.after_prompt:
            return fc.real_tokens
        if fc.last_column < fc.prompt_width:
            return None
        return fc.real_tokens & (fc.columns >= fc.prompt_width)

    def covers_chunk(self, fc: ForwardContext) -> bool:
        return fc.every_token_real and (fc.after_prompt or fc.first_column >= fc.prompt_width)


@dataclass(frozen=True)
class FirstGenerated(Positions):
    """The first `n` generated tokens of each row.

    On a compiled decoding step the count is compared on the device (`generated_offset`), so
    the step neither syncs nor specialises on its column; it then always takes the masked path.
    """

    kind: ClassVar[str] = "first_generated"
    n: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ConfigError(f"first_generated needs a whole number n >= 1, got {self.n!r}.")

    def mask(self, fc: ForwardContext) -> torch.Tensor | None:
        if fc.generated_offset is not None:
            index = fc.generated_offset + torch.arange(fc.seq, device=fc.device)
            return fc.real_tokens & (index < self.n)
        end = fc.prompt_width + self.n
        if fc.last_column < fc.prompt_width or fc.first_column >= end:
            return None
        return fc.real_tokens & (fc.columns >= fc.prompt_width) & (fc.columns < end)

    def covers_chunk(self, fc: ForwardContext) -> bool:
        if fc.generated_offset is not None:
            return False
        return (
            fc.every_token_real and fc.first_column >= fc.prompt_width
            and fc.last_column < fc.prompt_width + self.n
        )

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n}

    def __str__(self) -> str:
        return f"{self.kind}:{self.n}"


POSITION_KINDS: dict[str, type[Positions]] = {
    cls.kind: cls for cls in (AllTokens, PromptTokens, DecisionPosition, GeneratedTokens, FirstGenerated)
}


def parse_positions(spec: Positions | str | dict[str, Any] | None) -> Positions:
    """Build a spec from `"all"`, `"first_generated:3"`, `{"kind": ..., "n": ...}` or a spec."""
    if isinstance(spec, Positions):
        return spec
    if spec is None:
        raise ConfigError(f"positions must be given: one of {', '.join(POSITION_KINDS)}.")
    if isinstance(spec, str):
        kind, colon, arg = spec.partition(":")
        params: dict[str, Any] = {}
        if colon:
            if not re.fullmatch(r"[0-9]+", arg):
                raise ConfigError(
                    f"positions {spec!r}: the part after ':' must be a whole number, as in "
                    "'first_generated:3'."
                )
            params["n"] = int(arg)
    elif isinstance(spec, dict) or hasattr(spec, "items"):
        params = dict(spec)
        kind = str(params.pop("kind", ""))
    else:
        raise ConfigError(f"positions must be a string or a mapping, got {type(spec).__name__}.")
    cls = POSITION_KINDS.get(kind)
    if cls is None:
        raise ConfigError(
            f"Unknown positions {kind!r}.{suggest(kind, list(POSITION_KINDS))} Known: "
            f"{', '.join(POSITION_KINDS)}."
        )
    if params and cls is not FirstGenerated:
        raise ConfigError(f"positions {kind!r} takes no options, got {sorted(params)}.")
    unknown = set(params) - {"n"}
    if unknown:
        raise ConfigError(f"positions {kind!r} has no option {min(unknown)!r}.{suggest(min(unknown), ['n'])}")
    return cls(**params)
