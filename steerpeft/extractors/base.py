"""Extractors turn two sets of recorded activations into one direction per layer."""

from __future__ import annotations

from steerpeft.activations import Activations, Directions
from steerpeft.component import Component
from steerpeft.errors import DataError
from steerpeft.registry import Registry


class Extractor(Component):
    """Base class.  `needs_per_prompt` asks the recorder to keep one vector per prompt."""

    needs_per_prompt: bool = False
    min_prompts_per_class: int = 1

    def fit(self, positive: Activations, negative: Activations) -> Directions:
        self._check(positive, negative)
        vectors = {layer: self.direction(positive, negative, layer) for layer in positive.layers}
        return Directions(
            vectors,
            {layer: positive.mean(layer) for layer in positive.layers},
            {layer: negative.mean(layer) for layer in negative.layers},
        )

    def direction(self, positive: Activations, negative: Activations, layer: int) -> torch.Tensor:  # noqa: F821
        raise NotImplementedError

    def _check(self, positive: Activations, negative: Activations) -> None:
        for name, acts in (("positive", positive), ("negative", negative)):
            if acts.num_prompts < self.min_prompts_per_class:
                raise DataError(
                    f"{type(self).__name__} needs at least {self.min_prompts_per_class} {name} prompts, "
                    f"got {acts.num_prompts}. Add prompts or use the diff_means extractor."
                )


EXTRACTORS: Registry[Extractor] = Registry("extractor", base=Extractor)
