"""Check a local diffusers pipeline folder before diffusers reads it.

diffusers reports a damaged folder with its own errors (a JSONDecodeError from deep inside
``from_pretrained``, a ``SafetensorError`` without a file name, an ``AttributeError`` for a
class it cannot find, a size mismatch for a UNet that does not fit the text encoder). Every
job loads through `pipelines.sampling.load_pipeline`, which calls `check_pipeline_folder`
first, so each of these ends in one line naming the folder, the file and what is wrong:

- ``model_index.json`` is a JSON object; each component entry is ``[library, class]`` with a
  library of `LIBRARIES` or a ``diffusers.pipelines`` module (SD's safety checker) and a class
  that library has (``[null, null]``: no such component);
- each named component folder exists and holds its JSON config(s), each a JSON object;
- model components hold ``.safetensors`` weights with readable headers (pickled ``.bin`` /
  ``.pt`` weights alone are refused, never unpickled);
- the UNet fits the pipeline: its ``in_channels`` are the VAE's ``latent_channels`` and its
  ``cross_attention_dim`` is the text encoder's ``hidden_size`` (SDXL: the sum of both encoders',
  and its added embedding takes 6 time ids and the second encoder's ``projection_dim``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from erasure.tensor_files import PICKLE_SUFFIXES, check_tensor_file, describe

__all__ = ["LIBRARIES", "MODEL_INDEX", "check_pipeline_folder", "read_json_object"]

MODEL_INDEX = "model_index.json"
LIBRARIES = ("diffusers", "transformers")
# Config file of each kind of component (the first present counts); weights only for models.
CONFIG_FILES = ("config.json", "scheduler_config.json", "tokenizer_config.json", "preprocessor_config.json")
MAX_JSON_BYTES = 16 << 20


def read_json_object(path: Path, folder: Path) -> dict[str, Any]:
    """A JSON file that must hold an object.

    Raises:
        FileNotFoundError / ValueError: naming the folder and the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path.relative_to(folder)} is missing")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path.relative_to(folder)} is larger than {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path.relative_to(folder)} is not valid JSON "
                         f"({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.relative_to(folder)} must hold a JSON object, "
                         f"got {type(data).__name__}")
    return data


def _library_module(library: Any) -> str | None:
    """The module a model_index.json library names, as diffusers resolves it: a library of
    `LIBRARIES`, or a module of ``diffusers.pipelines`` (SD's safety checker is
    ``["stable_diffusion", "StableDiffusionSafetyChecker"]``); None for anything else."""
    if library in LIBRARIES:
        return library
    if not (isinstance(library, str) and library.isidentifier()):
        return None
    module = f"diffusers.pipelines.{library}"
    return module if importlib.util.find_spec(module) is not None else None


def _component_class(folder: Path, name: str, entry: Any) -> type | None:
    """The class a model_index.json entry names (None for ``[null, null]``)."""
    where = f"{MODEL_INDEX}: {name}={describe(entry)}"
    if not (isinstance(entry, list) and len(entry) == 2):
        raise ValueError(f"{where} must be a [library, class] pair, e.g. [\"diffusers\", \"AutoencoderKL\"]")
    library, class_name = entry
    if library is None and class_name is None:
        return None
    module = _library_module(library)
    if module is None or not isinstance(class_name, str):
        raise ValueError(f"{where}: the library must be one of {list(LIBRARIES)} or a diffusers pipeline module "
                         "(as SD's [\"stable_diffusion\", \"StableDiffusionSafetyChecker\"]) and the class a name")
    cls = getattr(importlib.import_module(module), class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"{where}: {library} has no class {class_name!r}")
    return cls


def _is_model(cls: type) -> bool:
    return any(base.__name__ in ("ModelMixin", "PreTrainedModel") for base in cls.__mro__)


def _check_component(folder: Path, name: str, cls: type) -> dict[str, Any]:
    """The component's config, after checking its folder, JSON files and weights."""
    part = folder / name
    if not part.is_dir():
        raise FileNotFoundError(f"{MODEL_INDEX} names {name} ({cls.__name__}) "
                                f"but there is no folder {name}/")
    for path in sorted(part.glob("*.json")):
        read_json_object(path, folder)
    config_path = next((part / c for c in CONFIG_FILES if (part / c).is_file()), None)
    if config_path is None:
        raise FileNotFoundError(f"{name}/ has no config ({' or '.join(CONFIG_FILES)})")
    if _is_model(cls):
        weights = sorted(part.glob("*.safetensors"))
        pickled = sorted(p.name for p in part.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not weights:
            found = f"only pickled weights {pickled} (never loaded: unpickling can run code; convert them " \
                    "to .safetensors)" if pickled else "no .safetensors weights"
            raise ValueError(f"{name}/ has {found}")
        for path in weights:
            check_tensor_file(path, "weights")
    return read_json_object(config_path, folder)


def _check_fit(folder: Path, configs: dict[str, dict[str, Any]]) -> None:
    """The UNet's input and cross-attention sizes match the VAE and text encoder(s); an SDXL
    UNet's added embedding fits its time ids and the second encoder's pooled projection."""
    unet, vae, text, text_2 = (configs.get(k) for k in ("unet", "vae", "text_encoder", "text_encoder_2"))
    pairs = []
    if unet is not None and vae is not None:
        pairs.append(("in_channels", unet.get("in_channels"), "vae/config.json latent_channels",
                      vae.get("latent_channels")))
    if unet is not None and text is not None and text_2 is None:
        pairs.append(("cross_attention_dim", unet.get("cross_attention_dim"), "text_encoder/config.json hidden_size",
                      text.get("hidden_size")))
    if unet is not None and text is not None and text_2 is not None:
        sizes = (text.get("hidden_size"), text_2.get("hidden_size"))
        pairs.append(("cross_attention_dim", unet.get("cross_attention_dim"), "the sum of text_encoder/ and "
                      "text_encoder_2/config.json hidden_size", None if None in sizes else sum(sizes)))
        time_dim, projection = unet.get("addition_time_embed_dim"), text_2.get("projection_dim")
        pairs.append(("projection_class_embeddings_input_dim", unet.get("projection_class_embeddings_input_dim"),
                      "6 x addition_time_embed_dim + text_encoder_2/config.json projection_dim",
                      None if None in (time_dim, projection) else 6 * time_dim + projection))
    for key, value, other, expected in pairs:
        if value is not None and expected is not None and value != expected:
            raise ValueError(f"unet/config.json {key}={describe(value)} does not fit the "
                             f"pipeline ({other} is {describe(expected)}): the UNet belongs to another model")


def check_pipeline_folder(folder: str | Path, label: str | None = None) -> None:
    """Check a local diffusers pipeline folder (see the module docstring).

    Args:
        folder: the folder.
        label: how messages name it (e.g. ``"--model='out/erased'"``); default ``model folder <folder>``.

    Raises:
        FileNotFoundError: a missing component folder or config.
        ValueError: one line naming the folder and the file that is wrong.
    """
    folder = Path(folder)
    try:
        _check_folder(folder)
    except (ValueError, FileNotFoundError) as err:
        kind = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
        message = str(err)
        separator = " " if message.startswith("is not") else ": "
        raise kind(f"{label or f'model folder {folder}'}{separator}{message}") from None


def _check_folder(folder: Path) -> None:
    if not (folder / MODEL_INDEX).is_file():
        raise ValueError(f"is not a diffusers pipeline folder (no {MODEL_INDEX})")
    index = read_json_object(folder / MODEL_INDEX, folder)
    if not isinstance(index.get("_class_name"), str):
        raise ValueError(f"{MODEL_INDEX} has no \"_class_name\" (the pipeline class)")
    configs = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, (list, dict)):
            continue  # "_class_name", "_diffusers_version" and plain options such as requires_safety_checker
        cls = _component_class(folder, name, entry)
        if cls is not None:
            configs[name] = _check_component(folder, name, cls)
    _check_fit(folder, configs)
