"""The reward model: the head on the frozen base's final hidden state and its Bradley-Terry loss, the
RewardModel that scores (prompt, response) pairs, and its checkpoints (save, load, the LoRA
option's sequence-classification model)."""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..kv_cache import device_of
from ..modeling import (
    ModelLoadError,
    ModelOptions,
    base_model_id,
    bnb_config,
    load_tokenizer,
    pick_device,
    resolve_attn_implementation,
    resolve_dtype,
    resolve_model_path,
)
from ..penalties import PENALTIES, penalty_matrix, weight_vector, weights_from
from ..prompts import PromptTemplates
from ..records import (
    atomic_dir,
    atomic_write_json,
    check_sealed_dir,
    read_json,
    seal_dir,
)
from .features import Tokens, extract_features, load_body

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CHECKPOINT_CONFIG = "reward_model.json"
HEAD_WEIGHTS = "head.safetensors"
INIT_HEAD_WEIGHTS = "head_init.safetensors"


def _torch_head_class():
    import torch
    from torch import nn

    class RewardHead(nn.Module):
        """Score = MLP or linear map of the standardised final hidden state (mean / scale from the
        training features, kept as buffers so a saved head carries them)."""

        def __init__(self, dim: int, hidden: int = 0):
            super().__init__()
            self.dim, self.hidden = dim, hidden
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("scale", torch.ones(dim))
            self.net = nn.Linear(dim, 1) if hidden == 0 else nn.Sequential(
                nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

        def standardise_from(self, feats) -> None:
            x = torch.as_tensor(feats, dtype=torch.float32)
            self.mean.copy_(x.mean(0))
            self.scale.copy_(x.std(0, unbiased=False).clamp_min(1e-6))

        def forward(self, h):
            return self.net((h - self.mean) / self.scale).squeeze(-1)

    return RewardHead


def new_head(dim: int, hidden: int, seed: int, train_feats=None):
    """A freshly initialised head (seeded), standardised on `train_feats` when given."""
    import torch

    RewardHead = _torch_head_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = RewardHead(dim, hidden)
    if train_feats is not None:
        head.standardise_from(train_feats)
    return head


def bt_loss(r_chosen, r_rejected, margin=None):
    """Bradley-Terry loss, as TRL's RewardTrainer: mean of -log sigmoid(r_c - r_r [- margin])."""
    import torch

    d = r_chosen - r_rejected
    if margin is not None:
        d = d - margin
    return -torch.nn.functional.logsigmoid(d).mean()


def head_scores(head, feats) -> np.ndarray:
    import torch

    with torch.no_grad():
        return head(torch.as_tensor(feats, dtype=torch.float32)).double().numpy()


class RewardModel:
    """A trained reward model: `score(prompts, responses)` gives the penalised rewards.

    kind "head": the frozen base's body plus a head on its final hidden state (features are
    computed as in training, prompts shared); kind "lora": a sequence-classification model with a
    LoRA adapter (TRL's RewardTrainer). `learned_scores` and `penalties` give the two parts."""

    def __init__(self, config: Mapping, tokenizer, head=None, body=None, seqcls=None, init_head=None):
        self.config = dict(config)
        self.tokenizer, self.head, self.body, self.seqcls, self.init_head = tokenizer, head, body, seqcls, init_head
        self.penalty_options = weights_from(self.config["penalties"])
        self.templates = PromptTemplates(**self.config["templates"]) if self.config.get("templates") else PromptTemplates()
        self.tokens = Tokens(tokenizer, self.config["max_length"], self.config["max_response_tokens"])
        self.batch_size = int(self.config.get("batch_size", 8))

    @property
    def kind(self) -> str:
        return self.config["kind"]

    def _check(self, prompts, responses) -> None:
        if isinstance(prompts, str) or isinstance(responses, str):
            raise TypeError("score takes lists: score([prompt, ...], [response, ...])")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one response per prompt")

    def features(self, prompts: Sequence[str], responses: Sequence[str], progress: bool | None = None) -> np.ndarray:
        return extract_features(self.body, self.tokens, list(prompts), list(responses), self.batch_size,
                                self.config.get("share_prompt_prefix", True), "scoring", progress)

    def learned_scores(self, prompts: Sequence[str], responses: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """The learned part of the reward (no penalties), one float64 per response."""
        self._check(prompts, responses)
        if not len(prompts):
            return np.zeros(0)
        if self.kind == "head":
            return head_scores(self.head, self.features(prompts, responses, progress))
        return seqcls_scores(self.seqcls, self.tokens, list(prompts), list(responses), self.batch_size)

    def penalties(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(N, 5) penalties in penalties.PENALTIES order, each in [0, 1]."""
        self._check(prompts, responses)
        return penalty_matrix(prompts, responses, self.penalty_options, self.templates)

    def penalty_totals(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.penalties(prompts, responses) @ weight_vector(self.penalty_options)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Penalised rewards: learned score - sum of weighted penalties, one per (prompt, response)."""
        return [float(x) for x in self.learned_scores(prompts, responses) - self.penalty_totals(prompts, responses)]

    def score_details(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict]:
        learned = self.learned_scores(prompts, responses)
        pens = self.penalties(prompts, responses)
        w = weight_vector(self.penalty_options)
        return [{"reward": float(s - p @ w), "learned": float(s), "penalty": float(p @ w),
                 "penalties": dict(zip(PENALTIES, map(float, p)))} for s, p in zip(learned, pens)]


def seqcls_scores(model, tokens: Tokens, prompts: list[str], responses: list[str], batch_size: int) -> np.ndarray:
    """Scores of a sequence-classification reward model (the LoRA option) on full sequences."""
    import torch

    device = device_of(model)
    pad = tokens.tok.pad_token_id
    out = np.zeros(len(prompts))
    seqs = [tokens.full(p, r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            width = max(len(seqs[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                ids[j, :len(seqs[i])] = torch.tensor(seqs[i])
                mask[j, :len(seqs[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[rows] = logits.squeeze(-1).float().cpu().numpy()
    model.train(was_training)
    return out


def checkpoint_config(cfg, kind: str, templates: PromptTemplates, hidden_size: int | None = None) -> dict:
    m = cfg.model
    return {"format": CHECKPOINT_FORMAT, "kind": kind, "base_model": base_model_id(m.model_name_or_path),
            "loaded_from": m.model_name_or_path, "dtype": m.dtype, "attn_implementation": m.attn_implementation,
            "load_in_4bit": bool(m.load_in_4bit), "load_in_8bit": bool(m.load_in_8bit),
            "bnb_4bit_quant_type": m.bnb_4bit_quant_type, "trust_remote_code": bool(m.trust_remote_code),
            "max_length": cfg.train.max_length, "max_response_tokens": cfg.run.max_response_tokens,
            "share_prompt_prefix": cfg.run.share_prompt_prefix, "batch_size": cfg.train.per_device_eval_batch_size,
            "head": {"hidden": cfg.run.head_hidden_size, "dim": hidden_size, "pooling": "last token (end of turn)"},
            "penalties": asdict(cfg.penalties), "templates": asdict(templates),
            "reward": "learned score - sum(weight x penalty)"}


def save_head_checkpoint(path: Path, config: Mapping, head, init_head=None, metrics: Mapping | None = None) -> None:
    """A 'head' reward model: reward_model.json + head.safetensors (+ the untrained head, + metrics), as one set."""
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / HEAD_WEIGHTS))
        if init_head is not None:
            save_file({k: v.contiguous() for k, v in init_head.state_dict().items()}, str(tmp / INIT_HEAD_WEIGHTS))
        atomic_write_json(tmp / CHECKPOINT_CONFIG, dict(config))
        if metrics is not None:
            atomic_write_json(tmp / "metrics.json", dict(metrics))
        seal_dir(tmp)   # load_reward_model refuses the set if a byte of any file changes


def _model_options_from(config: Mapping) -> ModelOptions:
    return ModelOptions(model_name_or_path=config["base_model"], dtype=config["dtype"],
                        attn_implementation=config["attn_implementation"], load_in_4bit=config["load_in_4bit"],
                        load_in_8bit=config["load_in_8bit"], bnb_4bit_quant_type=config["bnb_4bit_quant_type"],
                        trust_remote_code=config["trust_remote_code"])


def resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    """--checkpoint best|final (in the run folder) or a path, holding a saved reward model."""
    p = run_dir / checkpoint if checkpoint in ("best", "final") else Path(checkpoint)
    if not (p / CHECKPOINT_CONFIG).exists():
        raise FileNotFoundError(f"{p}: no saved reward model here ({CHECKPOINT_CONFIG} missing); train first "
                                f"(python train_rm.py -c ...) or pass --checkpoint best|final|<path>")
    return p


def read_checkpoint_config(path: str | Path) -> dict:
    p = Path(path) / CHECKPOINT_CONFIG
    if not p.exists():
        raise FileNotFoundError(f"{p}: not found; {Path(path)} is not a saved reward model (train_rm.py writes "
                                f"<output_dir>/best and <output_dir>/final)")
    check_sealed_dir(path)   # the head, its config and the adapter as written, or refused
    config = read_json(p, expected="a reward model config (JSON object)")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{p}: not a JSON object; {Path(path)} is not a reward model this version reads")
    if config.get("format") != CHECKPOINT_FORMAT or config.get("kind") not in ("head", "lora"):
        raise ModelLoadError(f"{p}: format {config.get('format')!r} / kind {config.get('kind')!r} is not a reward model "
                             f"this version reads (format {CHECKPOINT_FORMAT}, kind head or lora)")
    return config


def load_reward_model(path: str | Path, base_model: str | None = None, trust_remote_code: bool = False) -> RewardModel:
    """The reward model saved in `path` (train_rm.py's best/ or final/), ready to `score`.

    The base model is loaded by the name the checkpoint records (hub id; the embedded default's hub
    id resolves to its local copy); `base_model` overrides it (e.g. a local copy of the same model).
    Remote code runs only when the caller passes `trust_remote_code=True` (the user's own option):
    what the checkpoint's reward_model.json records is a file on disk, never a permission."""
    from safetensors.torch import load_file

    path = Path(path)
    config = read_checkpoint_config(path)
    if config.get("trust_remote_code") and not trust_remote_code:
        log.warning("%s: the checkpoint was trained with trust_remote_code; it is loaded without it (pass "
                    "--trust-remote-code yourself if its base needs code of its own)", path)
    config["trust_remote_code"] = bool(trust_remote_code)
    if base_model:
        config["base_model"] = base_model
    opts = _model_options_from(config)
    tokenizer = load_tokenizer(opts.model_name_or_path, padding_side="right", trust_remote_code=opts.trust_remote_code)
    if config["kind"] == "head":
        body = load_body(opts)
        state = load_file(str(path / HEAD_WEIGHTS))
        dim = state["mean"].shape[0]
        head = new_head(dim, config["head"]["hidden"], seed=0)
        head.load_state_dict(state)
        head.eval()
        init_head = None
        if (path / INIT_HEAD_WEIGHTS).exists():
            init_head = new_head(dim, config["head"]["hidden"], seed=0)
            init_head.load_state_dict(load_file(str(path / INIT_HEAD_WEIGHTS)))
        hidden = body.config.get_text_config().hidden_size
        if hidden != dim:
            raise ModelLoadError(f"{path}: the head expects {dim} features but {opts.model_name_or_path} gives {hidden}; "
                                 "load it with the base it was trained on")
        return RewardModel(config, tokenizer, head=head, body=body, init_head=init_head)
    model = load_seqcls(opts, tokenizer)
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(path))
    model.eval()
    if not (opts.load_in_4bit or opts.load_in_8bit):
        model.to(pick_device())
    return RewardModel(config, tokenizer, seqcls=model)


def load_seqcls(opts: ModelOptions, tokenizer):
    """The base as a one-label sequence-classification model (the LoRA option's reward model)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(opts.model_name_or_path)
    mcfg = AutoConfig.from_pretrained(path, trust_remote_code=opts.trust_remote_code)
    kwargs = seqcls_init_kwargs(opts, mcfg)
    quant = bnb_config(opts)
    if quant is not None:
        kwargs["quantization_config"] = quant
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def seqcls_init_kwargs(opts: ModelOptions, model_config) -> dict:
    return {"dtype": resolve_dtype(opts.dtype), "trust_remote_code": opts.trust_remote_code,
            "attn_implementation": resolve_attn_implementation(opts.attn_implementation,
                                                               getattr(model_config, "model_type", None),
                                                               getattr(opts, "force_attn_implementation", False))}


def save_lora_checkpoint(path: Path, model, config: Mapping, metrics: Mapping | None = None) -> None:
    """A 'lora' reward model: the PEFT adapter (with the score head as a module to save) + reward_model.json."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        atomic_write_json(tmp / CHECKPOINT_CONFIG, dict(config))
        if metrics is not None:
            atomic_write_json(tmp / "metrics.json", dict(metrics))
        seal_dir(tmp)
