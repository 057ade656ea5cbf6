"""The language-model head only where the loss is: vocabulary logits at answer positions alone.

SFT's loss is on the answer tokens (a ~30-token JSON object after hundreds to thousands of
evidence tokens) and DPO's on the completion tokens, yet a causal LM's forward projects every
position onto the vocabulary (49,152 entries for SmolLM2, 256,000 for Gemma-2). TRL 1.16's
SFTTrainer and DPOTrainer call the model with `fused_lm_head=True` (`trl.trainer.utils.
add_fused_lm_head`): the backbone runs, then the head is applied in tiles. On CUDA/XPU with Triton
it tiles only the positions whose label counts; elsewhere (CPU) it scores every position, and in
all cases it projects with `lm_head.weight` directly, so a LoRA on `lm_head` (or a trained copy
in `modules_to_save`) takes no part in the loss.

`add_answer_only_head(model)` replaces that fused forward with one that runs the backbone,
gathers the hidden states of the positions whose next-token label is not -100 (any layout:
padded rows, one padding-free row, packed rows), calls the output layer *module* on those alone
(so LoRA / modules_to_save / tied embeddings act as in a plain forward), applies Gemma-2's
final-logit soft-capping and the temperature, and returns TRL's own `FusedCausalLMOutput` (per-
token log-probs with gradient; entropy, top-1, mean logit and log sum p^2 for TRL's metrics,
without gradient), scattered back to the label positions. TRL's loss code then runs unchanged,
so every SFT / DPO loss type works as before. When the selected positions times the vocabulary
exceed `CHUNK_ELEMENTS` (32 MiB of float32), they go through the head in chunks whose logits are recomputed in the
backward pass (activation checkpointing) rather than kept, so memory stays bounded by one chunk.

Not covered, so TRL's head is kept (with one logged line): MoE router losses, and models whose
forward scales logits by a config value (`logit_scale`, `logits_scaling`, ...).

`liger-kernel`: TRL 1.16 refuses Liger's fused linear cross-entropy (it would replace the
forward this patch relies on) and applies only its layer kernels; `check_liger` makes
`use_liger_kernel: true` fail clearly where it cannot work (no CUDA, package missing).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import field

from .config import ConfigError

log = logging.getLogger("factuality.heads")

IGNORE_INDEX = -100
# Logits (selected positions x vocabulary) computed at once; above it, chunks recomputed in backward.
# 2**23 float32 values are 32 MiB: 32 answer tokens of Gemma-2's 256,000-entry vocabulary, 170 of
# SmolLM2's 49,152. The recomputation costs one more head pass over the answer tokens only.
CHUNK_ELEMENTS = 2 ** 23
# Config attributes some families scale their logits by (TRL's add_fused_lm_head reads the same ones).
LOGIT_SCALE_ATTRS = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
OUTPUT_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def answer_only_head_field():
    """The run option both training stages (sft.py, dpo.py) carry."""
    return field(default=True, metadata={
        "help": "compute the vocabulary logits only at the positions the loss reads (answer / completion tokens), "
                "not at every prompt and evidence token; same loss and gradients, far less time and memory for "
                "the head. false: TRL's own fused head"})


def check_liger(train_args) -> None:
    """`use_liger_kernel: true` needs a CUDA GPU and the liger-kernel package; say so before loading anything."""
    if not getattr(train_args, "use_liger_kernel", False):
        return
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ConfigError("use_liger_kernel: true needs a CUDA GPU (Liger's kernels are Triton kernels); none here. "
                          "Remove use_liger_kernel (answer_only_head already keeps the head to the answer tokens)")
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("use_liger_kernel: true needs the liger-kernel package; `pip install liger-kernel` or "
                          "remove use_liger_kernel")


def unsupported_reason(model) -> str | None:
    """Why the answer-only head cannot stand in for this model's own head (None: it can)."""
    text = model.config.get_text_config()
    scaled = [a for a in LOGIT_SCALE_ATTRS if getattr(text, a, None) not in (None, 1, 1.0)]
    if scaled:
        return f"the model scales its logits by config.{scaled[0]}"
    if getattr(text, "output_router_logits", False):
        return "the model adds a mixture-of-experts router loss"
    if model.get_output_embeddings() is None:
        return "the model has no output embeddings"
    return None


def _project(hidden, targets, head, softcap: float | None, inv_temperature: float, want: tuple[str, ...]):
    """Log-probs of `targets` under head(hidden) (float32, with gradient) and the metric fields in `want`
    (without gradient): entropy, log sum p^2, mean logit, whether the target is the first argmax."""
    import torch

    z = head(hidden).float()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    if inv_temperature != 1.0:
        z = z * inv_temperature
    log_z = torch.logsumexp(z, dim=-1)
    log_probs = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
    extra = {}
    with torch.no_grad():  # one (N, V) temporary at most: p, then dot products with it
        zd, lz = z.detach(), log_z.detach()
        if "entropy" in want or "log_sum_sq_probs" in want:
            p = (zd - lz.unsqueeze(-1)).exp_()
            if "entropy" in want:
                extra["entropy"] = lz - torch.linalg.vecdot(p, zd)
            if "log_sum_sq_probs" in want:
                extra["log_sum_sq_probs"] = torch.linalg.vecdot(p, p).log()
            del p
        if "mean_logits" in want:
            extra["mean_logits"] = zd.mean(-1)
        if "is_top1" in want:
            extra["is_top1"] = zd.argmax(-1) == targets
    return (log_probs,) + tuple(extra.get(k) for k in OUTPUT_FIELDS[1:])


def answer_log_probs(hidden, targets, head, softcap: float | None = None, temperature: float = 1.0,
                     want: tuple[str, ...] = ("log_probs",), chunk_elements: int = CHUNK_ELEMENTS):
    """(log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1), each of shape (N,), for N gathered
    hidden states (N, H) and their next-token targets (N,); fields not in `want` are None. Above
    `chunk_elements` logits, the positions go through the head in chunks recomputed in the backward pass."""
    import torch
    from torch.utils.checkpoint import checkpoint

    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    n = hidden.shape[0]
    rows = max(1, chunk_elements // max(vocab, 1))
    fn = functools.partial(_project, head=head, softcap=softcap, inv_temperature=1.0 / temperature, want=want)
    if n <= rows:
        parts = [fn(hidden, targets)]
    else:
        grad = torch.is_grad_enabled()
        parts = [checkpoint(fn, hidden[s:s + rows], targets[s:s + rows], use_reentrant=False) if grad
                 else fn(hidden[s:s + rows], targets[s:s + rows]) for s in range(0, n, rows)]
    return tuple(None if parts[0][i] is None else torch.cat([p[i] for p in parts]) for i in range(len(OUTPUT_FIELDS)))


def add_answer_only_head(model, temperature: float = 1.0,
                         outputs: tuple[str, ...] = ("log_probs", "entropy", "mean_logits", "is_top1",
                                                     "log_sum_sq_probs")) -> str | None:
    """Patch `model.forward` (a transformers causal LM, the base model under PEFT) so that calls with
    `fused_lm_head=True` (TRL's SFT / DPO loss) apply the head at label positions only. Calls without
    it (generation, plain forwards) go to the forward it had. Returns None when patched, else the
    reason it was not (the forward is left as it was)."""
    from trl.trainer.utils import FusedCausalLMOutput

    reason = unsupported_reason(model)
    if reason is not None:
        return reason
    previous = model.forward
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            passed = {k: v for k, v in (("labels", labels), ("shift_labels", shift_labels),
                                        ("num_items_in_batch", num_items_in_batch)) if v is not None}
            return previous(*args, **passed, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        head = self.get_output_embeddings()
        device = next(head.parameters()).device
        labels = labels.to(device)
        mask = labels != IGNORE_INDEX
        fields = answer_log_probs(hidden.to(device)[mask], labels[mask], head, softcap, temperature, outputs)
        # masked_scatter keeps the output connected to the graph even when no label counts (a zero loss)
        full = [None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in fields]
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        loss = -full[0].sum() / count
        return FusedCausalLMOutput(loss=loss, log_probs=full[0], entropy=full[1], log_sum_sq_probs=full[2],
                                   mean_logits=full[3], is_top1=full[4], label_mask=mask)

    model.forward = forward.__get__(model)
    model._answer_only_head = True
    return None


def install(trainer, enabled: bool) -> str:
    """Give a TRL SFT/DPO trainer the answer-only head (policy, and a separate reference model) when
    `enabled`; returns what the run's head is, for the log and the run card."""
    from peft import PeftModel

    if not enabled:
        return "TRL fused head (answer_only_head: false)"
    models = [trainer.model.get_base_model() if isinstance(trainer.model, PeftModel) else trainer.model]
    if getattr(trainer, "ref_model", None) is not None:
        models.append(trainer.ref_model.get_base_model() if isinstance(trainer.ref_model, PeftModel)
                      else trainer.ref_model)
    for m in models:
        reason = add_answer_only_head(m)  # TRL 1.16's SFT and DPO heads run at temperature 1
        if reason is not None:
            log.warning("answer_only_head: kept TRL's fused head because %s", reason)
            return f"TRL fused head ({reason})"
    return "answer-only"
