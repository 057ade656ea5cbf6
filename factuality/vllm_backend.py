"""vLLM as an optional generation backend (evaluate_sft.py and make_prefs.py --phase generate).

    python evaluate_sft.py -c configs/eval_pipeline.yaml --backend vllm
    python make_prefs.py --phase generate --sft-model checkpoints/sft/<run> --backend vllm

vLLM runs on CUDA GPUs only and is not a dependency (`pip install -e ".[vllm]"`); asking for it
without the package or without a GPU is one clear error. One engine per base model: the LoRA
adapters of that base are served beside it (`enable_lora`, one `LoRARequest` per adapter), the
base runs without one. Prompts go in as the token ids the transformers backend uses
(`generation.encode_prompts`), stop tokens are the same (`generation.stop_token_ids`), and each
output is cut at its first stop token and decoded with our tokenizer, so a `Generation` means
the same thing from either backend. `compare_backends` runs both on the same prompts, greedy,
and lists where they differ (tests/test_multiprocess.py runs it when a GPU and vllm exist).

vLLM uses every GPU it is given itself (`--vllm-tensor-parallel-size`): start it with `python`,
not `accelerate launch` (refused).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from .config import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm")


@dataclass
class BackendOptions:
    """Which engine generates (shared by evaluate_sft.py and make_prefs.py)."""

    backend: str = field(default="transformers", metadata={
        "help": "transformers (CPU or GPU, this suite's batched decode) or vllm (CUDA GPUs; pip install -e '.[vllm]')",
        "choices": list(BACKENDS)})
    vllm_gpu_memory_utilization: float = field(default=0.85, metadata={
        "gt": 0, "max": 1, "help": "--backend vllm: share of each GPU's memory vLLM may take (weights + KV cache)"})
    vllm_tensor_parallel_size: int = field(default=1, metadata={
        "min": 1, "help": "--backend vllm: GPUs one model is split across (a 9B model in bf16 fits one 24 GB GPU)"})


def check_available(backend: str, world_size: int = 1) -> None:
    """A ConfigError saying what is missing when `backend` cannot run here."""
    if backend != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("--backend vllm: the vllm package is not installed; install it on a CUDA machine with "
                          "`pip install -e '.[vllm]'`, or use --backend transformers")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--backend vllm: no CUDA GPU here (vLLM runs on GPUs only); use --backend transformers")
    if world_size > 1:
        raise ConfigError("--backend vllm uses every GPU itself (--vllm-tensor-parallel-size): start the script with "
                          "python, not accelerate launch / torchrun")


def _dtype(dtype: str | None) -> str:
    return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", None: "auto"}.get(dtype, dtype or "auto")


class VllmEngine:
    """One vLLM engine over `base` (a hub id or path), serving `adapters` ({tag: adapter dir})."""

    def __init__(self, base: str, adapters: Mapping[str, str], opts, seed: int = 0):
        from vllm import LLM

        from .modeling import resolve_model_path

        if getattr(opts, "load_in_8bit", False):
            raise ConfigError("--backend vllm has no 8-bit bitsandbytes loading; drop --use-8bit/--load-in-8bit "
                              "(or use --load-in-4bit, or --backend transformers)")
        kwargs = {}
        if getattr(opts, "load_in_4bit", False):
            kwargs.update(quantization="bitsandbytes")
        self.adapters = dict(adapters)
        self._ids = {tag: k + 1 for k, tag in enumerate(self.adapters)}
        ranks = [_lora_rank(p) for p in self.adapters.values()]
        if ranks:
            kwargs.update(enable_lora=True, max_loras=len(ranks), max_lora_rank=max(8, *ranks))
        self.llm = LLM(model=resolve_model_path(base), dtype=_dtype(opts.dtype), seed=seed,
                       trust_remote_code=bool(getattr(opts, "trust_remote_code", False)),
                       gpu_memory_utilization=opts.vllm_gpu_memory_utilization,
                       tensor_parallel_size=opts.vllm_tensor_parallel_size, **kwargs)

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter, self._ids[adapter], self.adapters[adapter])

    def iter_generate(self, tokenizer, prompt_ids: Sequence[Sequence[int]], indices: Sequence[int],
                      adapter: str | None = None, batch_size: int = 8, max_new_tokens: int = 256,
                      do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                      sample_seeds: Mapping[int, int] | Sequence[int] | None = None, progress: bool = True,
                      desc: str = "generate", **_transformers_only) -> Iterator[list]:
        """Yield `generation.Generation`s in chunks (vLLM batches inside a chunk itself), so the
        caller can append each chunk to a resumable file as iter_generate's batches are."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from .generation import Generation, stop_token_ids

        stop = stop_token_ids(tokenizer)
        stop_set = set(stop)
        todo = list(indices)
        chunk = max(batch_size * 16, 64)
        for k in range(0, len(todo), chunk):
            part = todo[k:k + chunk]
            params = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                     top_p=top_p if do_sample else 1.0, stop_token_ids=stop, skip_special_tokens=True,
                                     seed=int(sample_seeds[i]) if do_sample and sample_seeds is not None else None,
                                     logprobs=0)   # the chosen token's log-probability (confidence.py)
                      for i in part]
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(prompt_ids[i])) for i in part], params,
                                     use_tqdm=progress, lora_request=self._lora(adapter))
            batch = []
            for i, o in zip(part, outs):
                toks = list(o.outputs[0].token_ids)
                cut = next((n for n, t in enumerate(toks) if t in stop_set), None)
                kept = toks if cut is None else toks[:cut]
                batch.append(Generation(index=i, text=tokenizer.decode(kept, skip_special_tokens=True),
                                        output_tokens=len(kept), prompt_tokens=len(prompt_ids[i]),
                                        stopped=cut is not None or o.outputs[0].finish_reason == "stop",
                                        token_ids=kept, token_logprobs=_chosen_logprobs(o.outputs[0], kept)))
            yield batch


def _chosen_logprobs(output, kept: Sequence[int]) -> list[float] | None:
    """The log-probability vLLM reports for each kept token (None when it reported none)."""
    steps = getattr(output, "logprobs", None)
    if not steps or len(steps) < len(kept):
        return None
    out = []
    for tok, step in zip(kept, steps):
        entry = step.get(tok) if step else None
        if entry is None:
            return None
        out.append(float(getattr(entry, "logprob", entry)))
    return out


def _lora_rank(adapter_dir: str) -> int:
    import json
    from pathlib import Path

    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    return int(cfg.get("r") or 8)


def compare_backends(model, tokenizer, engine: VllmEngine, prompts: Sequence[str], max_new_tokens: int = 64,
                     adapter: str | None = None, batch_size: int = 8) -> dict:
    """Greedy outputs of the transformers backend (`model`, with `adapter` active if given) and
    of vLLM (`engine`) on the same prompts: {"n", "identical", "mismatches": [{index, transformers,
    vllm}]}. bf16 kernels differ between the two, so a long output may part ways after a near-tie;
    the share identical is the figure to report."""
    from .generation import encode_prompts, generate

    ids = encode_prompts(tokenizer, prompts)
    ours = generate(model, tokenizer, list(prompts), batch_size=batch_size, max_new_tokens=max_new_tokens,
                    prompt_ids=ids, progress=False)
    theirs: dict[int, str] = {}
    for batch in engine.iter_generate(tokenizer, ids, range(len(prompts)), adapter=adapter, batch_size=batch_size,
                                      max_new_tokens=max_new_tokens, progress=False):
        theirs.update({g.index: g.text for g in batch})
    mismatches = [{"index": i, "transformers": a, "vllm": theirs[i]} for i, a in enumerate(ours) if a != theirs[i]]
    return {"n": len(prompts), "identical": len(prompts) - len(mismatches), "mismatches": mismatches}
