"""Tiny, randomly initialised models for tests and benchmarks: built from a config, no download.

`make_tiny_model(dir)` writes a 2-layer Llama-shaped causal LM and a byte-level BPE tokenizer
with a ChatML chat template (the same template family as SmolLM2) to `dir`, so every code path
that takes a hub id or a local path can be exercised in seconds on a CPU. The tokenizer is
trained on a fixed text, so it (and everything tokenised with it) is identical run to run.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

# Fixed training text: enough English, JSON and evidence-prompt shapes for sensible merges.
_TRAIN_TEXT = [
    '{"answer": "Paris", "citations": ["E1", "E2"], "confidence": 0.9}',
    '{"answer": "insufficient evidence", "citations": [], "confidence": 0.0}',
    "Answer the question using only the evidence below. Cite the evidence ids you used.",
    "If the evidence does not contain the answer, answer insufficient evidence.",
    "Evidence: [E1] Title: text of the passage. [E2] Another passage about the question.",
    "Question: who wrote the song and when was it released in the United States?",
    "The quick brown fox jumps over the lazy dog. SUPPORTS REFUTES NOT ENOUGH INFO claim",
    "Wikipedia article sentence with numbers 1972 2001 1,000 and names like Linda Davis.",
] * 4


def make_tiny_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_TRAIN_TEXT, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<pad>",
        unk_token=None, additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(vocab_size: int, arch: str = "llama", **overrides):
    """A 2-layer config; `arch="gemma2"` gives the Gemma-2 shape (soft-capping, sliding window)."""
    from transformers import Gemma2Config, LlamaConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    if arch == "gemma2":
        common.update(head_dim=16, sliding_window=256)
        common.update(overrides)
        return Gemma2Config(**common)
    common.update(overrides)
    return LlamaConfig(**common)


def make_tiny_model(path: str | Path, seed: int = 0, arch: str = "llama", **config_overrides) -> Path:
    """Write a tiny random causal LM + tokenizer to `path` (idempotent) and return the path."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    tok = make_tiny_tokenizer()
    cfg = tiny_config(config_overrides.pop("vocab_size", len(tok)), arch=arch, **config_overrides)
    cfg.eos_token_id = tok.eos_token_id
    cfg.pad_token_id = tok.pad_token_id
    cfg.bos_token_id = None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "TINY_RANDOM_MODEL.json").write_text(json.dumps({"arch": arch, "seed": seed}) + "\n")
    return path


def make_tiny_nli_model(path: str | Path, seed: int = 0,
                        id2label: dict | None = None) -> Path:
    """A tiny random sequence-classification model (Llama-shaped, 3 labels) + the tiny tokenizer: an
    `nli:<path>` entailment checker for tests. The default labels put entailment last, so a checker
    that assumed index 0 would read the wrong column."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if (path / "config.json").exists():
        return path
    tok = make_tiny_tokenizer()
    labels = id2label or {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    cfg = tiny_config(len(tok), num_labels=len(labels), id2label=labels,
                      label2id={v: k for k, v in labels.items()}, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_tiny_true_model(path: str | Path, seed: int = 0) -> Path:
    """A tiny random T5 (seq2seq) + the tiny tokenizer, whose byte-level vocabulary has "1" and "0"
    as single tokens: a `true:<path>` (TRUE-style) entailment checker for tests."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    path = Path(path)
    if (path / "config.json").exists():
        return path
    tok = make_tiny_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                   num_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


GEMMA2_VOCAB = 256_000


def make_large_vocab_model(path: str | Path, vocab_size: int = GEMMA2_VOCAB, seed: int = 0, arch: str = "llama",
                           **config_overrides) -> Path:
    """`make_tiny_model` with Gemma-2's vocabulary size (256,000) and the same small body, tied input
    and output embeddings as Gemma-2 has: a model whose LM head dominates, as it does in training
    with long prompts and short answers. The tokenizer is the tiny one, so inputs use its first ids."""
    config_overrides.setdefault("tie_word_embeddings", True)
    return make_tiny_model(path, seed=seed, arch=arch, vocab_size=vocab_size, **config_overrides)


def make_example(idx: int = 0, source: str = "nq", answerable: bool = True, split: str = "test",
                 question: str | None = None, answer: str = "Linda Davis", n_chunks: int = 3,
                 gold_position: int = 1) -> dict:
    """A valid processed example (records.EXAMPLE) built by hand, for tests that need no corpus."""
    from .records import SCHEMA_VERSION, with_hash

    evidence, support = [], []
    for i in range(n_chunks):
        cid = f"E{i + 1}"
        if answerable and i == gold_position:
            text = f"The song was recorded as a duet by Reba McEntire and {answer} in 1993."
            start = text.index(answer)
            support.append({"chunk_id": cid, "start": start, "end": start + len(answer)})
        else:
            text = f"Passage {i} about an unrelated country music topic, number {idx}."
        evidence.append({"id": cid, "title": f"Title {i}", "text": text, "doc_id": f"doc{idx}-{i}"})
    hard = [c["id"] for c in evidence if not any(s["chunk_id"] == c["id"] for s in support)]
    rec = {
        "schema_version": SCHEMA_VERSION, "id": f"{source}:{idx}", "source": source, "split": split,
        "question": question or f"who sang the duet number {idx} with reba",
        "answers": [answer] if source != "fever" else ["SUPPORTS"],
        "answerable": answerable, "evidence": evidence, "support": support,
        "hard_negatives": hard, "meta": {},
    }
    return with_hash(rec)


@contextlib.contextmanager
def claimed_by_another_process(target: str | Path, timeout_s: float = 30.0) -> Iterator[None]:
    """While the block runs, another (real) process holds `records.claim(target)`, as a second run
    writing the same output would; the process is killed when the block ends."""
    import subprocess
    import sys
    import tempfile
    import time

    ready = Path(tempfile.mkdtemp()) / "ready"
    code = ("import time; from pathlib import Path; from factuality.records import claim; "
            f"claim({str(target)!r}); Path({str(ready)!r}).write_text('1'); time.sleep({timeout_s * 4})")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=str(Path(__file__).resolve().parent.parent))
    try:
        deadline = time.time() + timeout_s
        while not ready.exists() and time.time() < deadline and holder.poll() is None:
            time.sleep(0.05)
        if not ready.exists():
            raise RuntimeError(f"the process meant to hold the claim on {target} did not start")
        yield
    finally:
        holder.kill()
        holder.wait()
