"""Prompt sets as versioned data plus their loaders; see `prompts.sets.get_prompt_set`."""

from .sets import (
    Prompt,
    PromptSet,
    digit_prompts,
    get_prompt_set,
    imagenette_prompts,
    load_concept,
    load_i2p,
    load_prompt_file,
)

__all__ = [
    "Prompt",
    "PromptSet",
    "digit_prompts",
    "get_prompt_set",
    "imagenette_prompts",
    "load_concept",
    "load_i2p",
    "load_prompt_file",
]
