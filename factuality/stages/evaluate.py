"""evaluate_sft.py's logic: generate (resumably), score, break down, compare, report.

Files of one run (paths from the config; `<stem>` is --output without `.json`):
- `<stem>.json`                 results: config, hashes, metrics per model / source / bucket, deltas
- `<stem>.predictions.jsonl`    one PREDICTION row per (example, model tag), appended per batch
- `<stem>.md`                   the base-against-SFT table and the per-bucket / per-source tables
- `<stem>_plots/*.png`          metrics per prompt-length bucket and per source, base against SFT

A rerun with the same predictions file continues where the last one stopped: ids already
predicted for a model tag are skipped. Every row carries the signature of what determined it
(model fingerprint, generation settings, prompt templates, test-data hash); a row whose
signature differs from this run's is an error, never a silent mix.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import dist
from ..bootstrap import BootstrapSpec, bucket_labels, check_boundaries
from ..confidence import answer_probability
from ..entailment import support_checker
from ..published import published_measures
from ..config import ConfigError, to_dict
from ..generation import PREFILL_MODES
from ..modeling import EMBEDDED_MODEL, ModelOptions
from ..paths import TEST_FILE, VAL_FILE
from ..pool import (
    ModelPool,
    append_generations,
    fingerprint_hash,
    fingerprint_model,
    model_fingerprint,
    signature,
    templates_hash,
)
from ..predictions import (
    PREDICTION,
    check_signatures,
    load_existing,
    output_paths,
    prediction_row,
    read_external,
    read_test_examples,
    recorded_prompt_tokens,
    set_aside_name,
    settle_replaced,
    split_counts,
)
from ..prompts import (
    PromptTemplates,
    render_prompt,
)
from ..records import (
    JsonlAppender,
    RecordError,
    atomic_write_json,
    atomic_write_text,
    claim,
    read_examples,
    releasing_claims,
    sha256_file,
)
from ..report import (
    compute_metrics,
    format_summary,
    write_plots,
)
from ..selective import SELECTIVE_SUFFIX, fit_selective, selective_rows
from ..systems import comparisons_for as _comparisons_for
from ..systems import plan_systems
from ..text import approx_tokens
from ..vllm_backend import BackendOptions

log = logging.getLogger(__name__)

TAG_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


ATTN_IMPL = {"sdpa": "sdpa", "eager": "eager", "flash2": "flash_attention_2", "flash_attention_2": "flash_attention_2"}
FAST_MAX_NEW_TOKENS = 64  # a grounded answer object is ~20-40 tokens; longer means it is rambling


@dataclass
class EvalConfig(ModelOptions, BackendOptions):
    """Options of evaluate_sft.py. Model loading options are ModelOptions' (TRL ModelConfig);
    its LoRA-shaping fields mean nothing here and are left off the command line. --backend
    chooses the generation engine (vllm_backend.BackendOptions)."""

    CLI_HIDDEN = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
                  "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora", "lora_top_layers")
    # ModelOptions' model_name_or_path / attn_implementation are set from --base-model / --attn-impl
    model_name_or_path: str = field(default=EMBEDDED_MODEL, metadata={
        "cli": False, "help": "set from --base-model (or the adapter's base); not set directly"})
    attn_implementation: str = field(default="sdpa", metadata={"cli": False, "help": "set from --attn-impl"})

    model_path: str | None = field(default=None, metadata={
        "help": "the model to evaluate: a LoRA adapter dir written by train_sft.py (checkpoints/sft/<run>), "
                "evaluated over its base, or a full model dir / hub id"})
    base_model: str | None = field(default=None, metadata={
        "help": f"base model id/path; default: the adapter's base_model_name_or_path, else {EMBEDDED_MODEL}"})
    test_data: str = field(default=TEST_FILE, metadata={"help": "processed test split (build_data.py)"})
    allow_train_split: bool = field(default=False, metadata={
        "help": "score --test-data examples whose split is train (refused by default: a model scored on what it "
                "trained on says nothing about held-out quality); the results name the splits scored"})
    compare_baseline: bool = field(default=False, metadata={
        "help": "also run the base model (adapter disabled) on the same examples and report deltas"})
    batch_size: int = field(default=4, metadata={"min": 1, "help": "prompts generated together (length-sorted, left-padded)"})
    max_new_tokens: int = field(default=256, metadata={"min": 1, "help": "generation limit per output"})
    buckets: list[int] = field(default_factory=lambda: [2048, 3072, 4096, 5120, 6144, 7168, 7936], metadata={
        "help": "prompt-token bucket boundaries: 2048,3072 gives <=2048, 2049-3072, >3072"})
    attn_impl: str = field(default="sdpa", metadata={
        "help": "attention kernel: sdpa, eager, flash2 (= flash_attention_2; CUDA + flash-attn)",
        "choices": list(ATTN_IMPL)})
    output: str = field(default="eval_results.json", metadata={
        "help": "results JSON; predictions, summary (.md) and plots are written beside it"})
    predictions_out: str | None = field(default=None, metadata={
        "help": "predictions JSONL (default: <output stem>.predictions.jsonl); a rerun resumes from it"})
    predictions: str | None = field(default=None, metadata={
        "help": "score this JSONL of existing outputs ({id, raw_output[, model_tag]} a line), or an ALCE / Trust-Eval "
                "output file ({data: [{question, output, docs}]}: free text citing [1][2]; matched to the test "
                "examples by question), without loading a model"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer for prompt lengths when scoring --predictions (default: lengths recorded in the file, "
                "else characters/4); with a model: overrides the evaluated model's tokenizer"})
    model_tag: str = field(default="sft", metadata={"help": "tag of --model-path's rows (the base is 'base')"})
    systems: list[str] = field(default_factory=list, metadata={
        "help": "more systems in one run, each tag=path (an adapter dir or a full model): "
                "--systems sft=checkpoints/sft/run,dpo=checkpoints/dpo/run; 'base' (no path) adds the base model"})
    compare: list[str] = field(default_factory=list, metadata={
        "help": "comparisons as new:old tag pairs, e.g. sft:base,dpo:sft (default: every system against base, "
                "or each system against the one before it when there is no base)"})
    fast: bool = field(default=False, metadata={
        "help": f"quick look: greedy, max_new_tokens capped at {FAST_MAX_NEW_TOKENS}, no bootstrap intervals, no plots"})
    overwrite: bool = field(default=False, metadata={
        "help": "discard an existing predictions file instead of resuming from it"})
    limit: int = field(default=0, metadata={"min": 0, "help": "evaluate only the first N test examples (0 = all)"})
    max_batches: int = field(default=0, metadata={"min": 0, 
        "help": "stop after N batches per model (0 = no limit); results are marked partial and a rerun resumes"})
    bootstrap_samples: int = field(default=1000, metadata={"min": 0, "help": "bootstrap resamples for the intervals (0 = none)"})
    ci_level: float = field(default=0.95, metadata={"gt": 0, "lt": 1, "help": "confidence level of the intervals"})
    seed: int = field(default=42, metadata={"help": "seed for sampling (if any) and the bootstrap"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=0.7, metadata={"gt": 0, "help": "sampling temperature (with --do-sample)"})
    top_p: float = field(default=0.95, metadata={"gt": 0, "max": 1, "help": "nucleus sampling mass (with --do-sample)"})
    prefill: str = field(default="auto", metadata={
        "help": "auto (per_example on CPU, batched on GPU), batched (one padded forward per batch) or per_example "
                "(each prompt alone, KV caches stacked for a batched decode)", "choices": list(PREFILL_MODES)})
    prompts_dir: str | None = field(default=None, metadata={
        "help": "prompt templates written by prompt_schema.py (default: the adapter's prompts/ dir, saved by "
                "train_sft.py, else the built-in templates)"})
    confidence: str = field(default="answer_tokens", metadata={
        "help": "the confidence scored: answer_tokens (the probability the model gave its answer's tokens, written "
                "into the output; the number it wrote is kept as stated_confidence) or stated (the number it wrote)",
        "choices": ["answer_tokens", "stated"]})
    constrained: list[str] = field(default_factory=list, metadata={
        "help": "system tags whose outputs are held to the answer contract while they are generated (constrained.py: "
                "valid JSON, ids of the evidence shown, a refusal cites nothing, no evidence id as the answer); 'all' "
                "for every system. To see a model both ways, list it twice: --systems sft=DIR,sft_free=DIR "
                "--constrained sft"})
    selective: list[str] = field(default_factory=list, metadata={
        "help": "system tags that also get a selective column <tag>.sel (selective.py): the answer's confidence "
                "calibrated and an abstention threshold chosen, both on --calibration-data, then applied to the test "
                "outputs as they are"})
    calibration_data: str = field(default=VAL_FILE, metadata={
        "help": "held-out examples --selective fits on (build_data.py's val split; no test example may be in it)"})
    plots: bool = field(default=True, metadata={"help": "write PNG plots per bucket and per source"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    entailment: str = field(default="lexical", metadata={"help": "the checker every citation measure uses "
        "(entailment.py): lexical (cannot judge FEVER verdicts), nli:<hub id or path>, true:<hub id or path>"})
    entailment_cache: str | None = field(default=None, metadata={"help": "the entailment score cache's folder "
        "(default: <output stem>.entailment/), sha256-checked when read"})
    entailment_batch_size: int = field(default=16, metadata={"min": 1, "help": "premise-hypothesis pairs scored together"})

    def validate(self) -> None:
        from ..entailment import check_spec

        check_spec(self.entailment)
        self.attn_implementation = ATTN_IMPL[self.attn_impl]
        if self.base_model:
            self.model_name_or_path = self.base_model
        if not self.model_path and not self.predictions and not self.systems:
            raise ConfigError("pass --model-path (the fine-tuned model), --systems tag=path,... or --predictions FILE "
                              "(outputs to score)")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("--batch-size and --max-new-tokens must be >= 1")
        if not 0 < self.ci_level < 1:
            raise ConfigError(f"--ci-level {self.ci_level} must be between 0 and 1, e.g. 0.95")
        check_boundaries(self.buckets)
        if self.compare_baseline and self.model_tag == "base":
            raise ConfigError("--model-tag base is the baseline's tag; pick another for the evaluated model")
        for spec in self.systems:
            tag, _, path = spec.partition("=")
            if not TAG_RE.match(tag) or (tag != "base" and not path):
                raise ConfigError(f"--systems {spec!r}: expected tag=path (tag of letters, digits, . _ -), or 'base'")
        for pair in self.compare:
            new, sep, old = pair.partition(":")
            if not sep or not TAG_RE.match(new) or not TAG_RE.match(old) or new == old:
                raise ConfigError(f"--compare {pair!r}: expected new:old with two different system tags, e.g. dpo:sft")
        if self.constrained and self.backend != "transformers":
            raise ConfigError(f"--constrained runs on the transformers backend (constrained.py masks its decode loop); "
                              f"drop --constrained or use --backend transformers (got --backend {self.backend})")
        tags = [s.partition("=")[0] for s in self.systems] + ([self.model_tag] if self.model_path else []) + (
            ["base"] if self.compare_baseline else [])
        if self.selective and self.predictions:
            raise ConfigError("--selective generates each system's val outputs to fit on; with --predictions there is "
                              "no model to generate them: drop one of the two")
        missing = [t for t in self.selective if t not in tags]
        if missing:
            raise ConfigError(f"--selective {missing[0]!r} is not a system of this run ({', '.join(tags)})")
        bad = [t for t in self.constrained if t != "all" and not TAG_RE.match(t)]
        if bad:
            raise ConfigError(f"--constrained {bad[0]!r}: expected system tags (letters, digits, . _ -) or 'all'")
        if self.fast:
            self.do_sample = False
            self.max_new_tokens = min(self.max_new_tokens, FAST_MAX_NEW_TOKENS)


RESULTS_VERSION = 1

# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """The rows one run scores, per system tag, and how they were obtained."""

    rows_by_tag: dict[str, dict[str, dict]]
    prompt_tokens: dict[str, int]      # example id -> prompt length
    counted_with: str                  # how the prompt lengths were counted
    comparisons: list[tuple[str, str]]
    models: dict[str, dict]
    file: str                          # the predictions file
    templates: PromptTemplates
    templates_from: str
    signatures: dict[str, Any] = field(default_factory=dict)
    partial: bool = False
    selective: dict[str, dict] = field(default_factory=dict)   # tag -> selective.fit_selective's result


@releasing_claims
def run(cfg) -> dict:
    """Generate (or read) predictions of every system, score them, and write results, summary and plots."""
    from ..provenance import set_seed

    set_seed(cfg.seed)
    boundaries = check_boundaries(cfg.buckets)
    paths = output_paths(cfg.output, cfg.predictions_out)
    if dist.is_main_process():
        claim(paths["results"])   # one evaluation writes these results (and their predictions) at a time
    examples = read_test_examples(cfg)
    data_sha = sha256_file(cfg.test_data)
    templates = PromptTemplates.from_dir(cfg.prompts_dir)
    templates_from = cfg.prompts_dir or "built-in (factuality/prompts.py)"
    if cfg.predictions:
        preds = rescore_predictions(cfg, examples, templates, templates_from)
    else:
        preds = generate_predictions(cfg, examples, paths, data_sha, templates, templates_from)
        if preds is None or (cfg.selective and not add_selective(cfg, preds, examples, paths)):
            return {}  # the main process scores and reports
    return write_results(cfg, examples, preds, paths, data_sha, boundaries)


def add_selective(cfg, preds: Predictions, examples: Sequence[dict], paths: Mapping[str, Path]) -> bool:
    """The <tag>.sel systems of --selective: each system's validation outputs generated (a predictions
    file of their own, resumable like the test one), calibration and threshold fitted on them, and
    applied to its test rows. False on a process other than the main one."""
    from ..report import rescore

    val = read_examples(cfg.calibration_data)
    clash = sorted({e["id"] for e in val} & {e["id"] for e in examples})
    if clash:
        raise ConfigError(f"--calibration-data {cfg.calibration_data} holds test example {clash[0]!r}: a threshold "
                          f"fitted on test outputs would flatter them; pass the val split")
    sub = replace(cfg, model_path=None, compare_baseline=False, compare=[], selective=[],
                  systems=[s for s in cfg.systems if s.partition("=")[0] in cfg.selective])
    cal_paths = output_paths(f"{paths['results'].with_suffix('')}.calibration.json")
    val_sha = sha256_file(cfg.calibration_data)
    cal = generate_predictions(sub, val, cal_paths, val_sha, preds.templates, preds.templates_from)
    if cal is None:
        return False
    checker = support_checker(entailment_checker(cfg, paths))   # the same support rule as the test scores
    score = functools.partial(rescore, checker=checker)
    for tag in cfg.selective:
        fitted = fit_selective(val, cal.rows_by_tag.get(tag, {}), score)
        preds.rows_by_tag[tag + SELECTIVE_SUFFIX] = selective_rows(preds.rows_by_tag[tag], fitted["fit"],
                                                                   fitted["threshold"])
        preds.models[tag + SELECTIVE_SUFFIX] = {**preds.models[tag], "selective_of": tag}
        preds.selective[tag] = {**fitted, "calibration_data": {"path": cfg.calibration_data, "sha256": val_sha},
                                "calibration_predictions": str(cal_paths["predictions"])}
        log.info("%s%s: calibrated on %d validation answers, threshold %.3f (val Trust-Score %.3f, %.3f without)",
                 tag, SELECTIVE_SUFFIX, fitted["answers"], fitted["threshold"], fitted["trust_score"],
                 fitted["trust_score_without"])
    return True


# ---- re-score outputs that already exist: no model is loaded
def rescore_predictions(cfg, examples: Sequence[dict], templates: PromptTemplates, templates_from: str) -> Predictions:
    """The rows of --predictions, checked against the test examples, with prompt and output lengths."""
    from ..published import is_their_output_file, read_their_outputs

    by_id = {e["id"]: e for e in examples}
    if is_their_output_file(cfg.predictions):   # ALCE's / Trust-Eval's {data: [{question, output, docs}]}
        rows_by_tag = read_their_outputs(cfg.predictions, examples, cfg.model_tag)
    else:
        rows_by_tag = read_external(cfg.predictions, cfg.model_tag)
    if not rows_by_tag:
        raise RecordError(f"{cfg.predictions}: no predictions; expected one {{id, raw_output[, model_tag]}} "
                          f"object a line")
    models_info = {}
    for tag, rows in rows_by_tag.items():
        unknown = [i for i in rows if i not in by_id]
        if unknown:
            raise RecordError(f"{cfg.predictions}: {len(unknown)} '{tag}' prediction ids are not in "
                              f"{cfg.test_data} (first: {unknown[0]!r}); score against the test file "
                              f"the predictions were made on (and check --limit)")
        models_info[tag] = {"name": f"predictions file {cfg.predictions}", "fingerprint_sha256": None}
    comparisons = _comparisons_for(cfg, list(rows_by_tag))
    tok = None
    if cfg.tokenizer:
        from ..generation import encode_prompts
        from ..modeling import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer)
        lens = [len(x) for x in encode_prompts(tok, [render_prompt(e, tok, templates) for e in examples])]
        prompt_tokens = dict(zip(by_id, lens))
        counted_with = f"tokenizer {cfg.tokenizer}"
    else:
        prompt_tokens, counted_with = recorded_prompt_tokens(examples, rows_by_tag, templates)
    for rows in rows_by_tag.values():
        for r in rows.values():
            if r.get("output_tokens") is None:
                r["output_tokens"] = (len(tok(r["raw_output"], add_special_tokens=False)["input_ids"])
                                      if tok is not None else approx_tokens(r["raw_output"]))
    return Predictions(rows_by_tag, prompt_tokens, counted_with, comparisons, models_info, cfg.predictions,
                       templates, templates_from)


# ---- generate, appending per batch; a rerun continues where the last one stopped
def generate_predictions(cfg, examples: Sequence[dict], paths: Mapping[str, Path], data_sha: str,
                         templates: PromptTemplates, templates_from: str) -> Predictions | None:
    """Every system's predictions, generated where the predictions file lacks them (None on a
    process other than the main one: the main process scores and reports)."""
    from ..generation import encode_prompts
    from ..modeling import load_tokenizer
    from ..vllm_backend import check_available

    check_available(cfg.backend, dist.world_size())
    systems, comparisons = plan_systems(cfg)
    first = next((s for s in systems if s["adapter"]), systems[0])
    templates, templates_from = _templates_for(cfg, systems, templates, templates_from)
    tok_source = cfg.tokenizer or (first["adapter"] if first["adapter"] and
                                   (Path(first["adapter"]) / "tokenizer_config.json").exists() else first["evaluated"])
    tok = load_tokenizer(tok_source, padding_side="left", trust_remote_code=cfg.trust_remote_code)
    prompts = [render_prompt(e, tok, templates) for e in examples]
    prompt_ids = encode_prompts(tok, prompts)
    prompt_tokens = {e["id"]: len(x) for e, x in zip(examples, prompt_ids)}
    counted_with = f"tokenizer of the evaluated model ({tok_source})"
    payloads, signatures, models_info = system_signatures(cfg, systems, templates, data_sha, tok_source)
    pred_path = paths["predictions"]
    # Several processes (accelerate launch / torchrun): each generates its share of every system's
    # examples into its own part file; the main process merges them in input order at the end.
    parts = dist.RankParts(pred_path, PREDICTION, key=lambda row: (row["model_tag"], row["id"]))
    existing = _open_predictions(cfg, pred_path, parts, signatures, payloads)
    try:
        partial = _generate_systems(cfg, systems, examples, tok, prompts, prompt_ids, signatures, existing, parts)
    except BaseException:
        settle_replaced(pred_path, parts.leftovers())   # nothing generated: the set-aside predictions come back
        raise
    settle_replaced(pred_path, parts.leftovers())
    if dist.world_size() > 1:
        position = {(s["tag"], e["id"]): (k, n) for k, s in enumerate(systems) for n, e in enumerate(examples)}
        parts.merge(order=lambda row: position[(row["model_tag"], row["id"])])
        partial = any(dist.gather_object(partial))
        if not dist.is_main_process():
            return None
        existing = load_existing(pred_path)
    rows_by_tag = {s["tag"]: existing.get(s["tag"], {}) for s in systems}
    return Predictions(rows_by_tag, prompt_tokens, counted_with, comparisons, models_info, str(pred_path),
                       templates, templates_from, signatures, partial)


def _templates_for(cfg, systems, templates: PromptTemplates, templates_from: str) -> tuple[PromptTemplates, str]:
    """The templates the first adapter was trained on (its prompts/ dir) unless --prompts-dir is given."""
    adapters = [s for s in systems if s["adapter"]]
    first = adapters[0] if adapters else systems[0]
    trained_with = Path(first["adapter"]) / "prompts" if first["adapter"] else None
    if cfg.prompts_dir is None and trained_with is not None and (trained_with / "system.txt").exists():
        templates = PromptTemplates.from_dir(trained_with)  # the templates the adapter was trained on
        templates_from = str(trained_with)
        for a in adapters[1:]:
            other = Path(a["adapter"]) / "prompts"
            if (other / "system.txt").exists() and templates_hash(PromptTemplates.from_dir(other)) != templates_hash(templates):
                log.warning("%s was trained with other prompt templates than %s; every system is prompted with "
                            "the latter's (pass --prompts-dir to choose)", a["adapter"], first["adapter"])
    return templates, templates_from


def is_constrained(cfg, tag: str) -> bool:
    return "all" in cfg.constrained or tag in cfg.constrained


def system_signatures(cfg, systems, templates: PromptTemplates, data_sha: str, tok_source: str):
    """Per system tag: the payload of what determines its predictions, its signature, and its model info."""
    settings = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample,
                "temperature": cfg.temperature if cfg.do_sample else None,
                "top_p": cfg.top_p if cfg.do_sample else None, "seed": cfg.seed, "dtype": cfg.dtype,
                "load_in_4bit": cfg.load_in_4bit, "load_in_8bit": cfg.load_in_8bit,
                "attn_implementation": cfg.attn_implementation, "confidence": cfg.confidence}
    if cfg.backend != "transformers":  # another engine's kernels: its outputs are its own
        settings["backend"] = cfg.backend
    settings_of = {s["tag"]: dict(settings, constrained=is_constrained(cfg, s["tag"])) for s in systems}
    payloads, signatures, models_info = {}, {}, {}
    base_fps: dict[str, str] = {}
    for sysm in systems:
        tag = sysm["tag"]
        if sysm["base"] not in base_fps:
            base_fps[sysm["base"]] = fingerprint_hash(fingerprint_model(sysm["base"]))
        if sysm.get("is_base"):
            fp = {"model": sysm["base"], "fingerprint": base_fps[sysm["base"]]}
        elif sysm["adapter"]:
            fp = {"model": sysm["base"], "fingerprint": base_fps[sysm["base"]], "adapter": sysm["adapter"],
                  "adapter_fingerprint": fingerprint_hash(model_fingerprint(sysm["adapter"]))}
        else:
            fp = {"model": sysm["evaluated"], "fingerprint": fingerprint_hash(fingerprint_model(sysm["evaluated"]))}
        payloads[tag] = {**fp, **settings_of[tag], "templates": templates_hash(templates), "test_data": data_sha,
                         "tokenizer": tok_source}
        signatures[tag] = signature(payloads[tag])
        models_info[tag] = {"name": fp.get("adapter") or fp["model"], "base": sysm["base"] if tag != "base" else None,
                            "base_from": sysm["base_from"],
                            "fingerprint_sha256": fp.get("adapter_fingerprint") or fp["fingerprint"]}
    return payloads, signatures, models_info


def _open_predictions(cfg, pred_path: Path, parts, signatures: Mapping, payloads: Mapping) -> dict:
    """The rows already in the predictions file ({tag: {id: row}}; none with --overwrite), checked
    against this run's signatures, which its sidecar then records."""
    sidecar_path = Path(f"{pred_path}.signatures.json")
    settle_replaced(pred_path, parts.leftovers())   # a run killed after --overwrite set the old files aside
    if cfg.overwrite and dist.is_main_process():
        for p in (pred_path, sidecar_path, *parts.leftovers()):
            if p.exists():
                os.replace(p, set_aside_name(p))
    dist.wait_for_everyone()
    parts.fold_leftovers()  # rows a killed rank finished join the file (and are reused below)
    if dist.is_main_process():
        JsonlAppender(pred_path, PREDICTION).close()  # opening cuts a line torn by a kill, before it is read
    dist.wait_for_everyone()
    existing = load_existing(pred_path)
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8")) if sidecar_path.exists() else {}
    for tag, sig in signatures.items():
        check_signatures(pred_path, existing, tag, sig, payloads[tag], sidecar)
        sidecar.setdefault(tag, {})[sig] = payloads[tag]
    if dist.is_main_process():
        atomic_write_json(sidecar_path, sidecar)
    return existing


def _generate_systems(cfg, systems, examples, tok, prompts, prompt_ids, signatures, existing, parts) -> bool:
    """Generate each system's missing predictions (this process's share), appended batch by batch
    to `existing` and the file; True when --max-batches stopped it early."""
    adapters = [s for s in systems if s["adapter"]]
    partial = False
    pool = ModelPool(cfg)
    with parts.open() as out:
        for sysm in systems:
            tag = sysm["tag"]
            done = existing.get(tag, {})
            todo = [i for i, e in enumerate(examples) if e["id"] not in done]
            log.info("%s: %d/%d already predicted, %d to go", tag, len(examples) - len(todo), len(examples), len(todo))
            todo = dist.split_between_processes(todo)
            if not todo:
                continue

            def make_row(g, tag=tag):
                e = examples[g.index]
                prob = (answer_probability(tok, g.token_ids, g.token_logprobs, g.text)
                        if cfg.confidence == "answer_tokens" else None)
                row = prediction_row(e, tag, g.text, g.prompt_tokens, g.output_tokens, signatures[tag],
                                     stopped=g.stopped, answer_prob=prob)
                existing.setdefault(tag, {})[e["id"]] = row
                return row

            extra = {}
            if is_constrained(cfg, tag):
                from ..constrained import ContractConstraint   # lm-format-enforcer: loaded only when used

                extra["constraint"] = ContractConstraint(tok, [[c["id"] for c in e["evidence"]] for e in examples])
            batches = pool.batches(sysm, adapters, tok, prompts, prompt_ids, todo, batch_size=cfg.batch_size,
                                   max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                                   temperature=cfg.temperature, top_p=cfg.top_p, prefill=cfg.prefill,
                                   desc=tag, progress=cfg.progress, **extra)
            partial = append_generations(out, make_row, batches, max_batches=cfg.max_batches)
            if partial:
                log.warning("%s: stopped after %d batches (--max-batches); rerun to continue", tag, cfg.max_batches)
                break
    del pool
    return partial


# ---- results
def write_results(cfg, examples: Sequence[dict], preds: Predictions, paths: Mapping[str, Path], data_sha: str,
                  boundaries: Sequence[int]) -> dict:
    """Score the predictions, write the plots, the summary and last the results file; returns the results."""
    from ..provenance import run_card

    boot = BootstrapSpec(n_boot=0 if cfg.fast else cfg.bootstrap_samples, level=cfg.ci_level, seed=cfg.seed)
    rows_by_tag = dict(sorted(preds.rows_by_tag.items(), key=lambda kv: kv[0] != "base"))  # base is the first column
    checker = entailment_checker(cfg, paths)
    scored = compute_metrics(examples, rows_by_tag, preds.prompt_tokens, boundaries, boot,
                             comparisons=preds.comparisons, checker=support_checker(checker))
    published = published_measures(examples, rows_by_tag, checker)   # ALCE's and Trust-Eval's, x 100
    checker.save()
    results = run_card("evaluate_sft.py", to_dict(cfg), {"test_data": data_sha}, results_version=RESULTS_VERSION)
    results["inputs"] = {"test_data": {"path": str(cfg.test_data), "sha256": data_sha, "examples": len(examples),
                                       "splits": split_counts(examples)},
                         "predictions": preds.file}
    results["models"] = preds.models
    results["entailment"] = checker.describe()
    results["signatures"] = preds.signatures
    results["complete"] = not preds.partial and all(c["missing"] == 0 for c in scored["coverage"].values())
    results["prompt_templates"] = {"from": preds.templates_from, "sha256": templates_hash(preds.templates)}
    results["prompt_length"] = {"counted_with": preds.counted_with, "boundaries": boundaries,
                                "buckets": bucket_labels(boundaries)}
    results["bootstrap"] = {**asdict(boot), "description": (
        f"{boot.level:.0%} percentile bootstrap over examples, {boot.n_boot} resamples, seed {boot.seed}; "
        f"deltas by paired bootstrap (same resample for both models)" if boot.n_boot else "none (--fast or 0 resamples)")}
    results.update(scored)
    results["published"] = {**published, "entailment": checker.spec, "about": (
        "ALCE's (factuality/alce.py) and Trust-Eval's (factuality/trusteval.py) measures under their own names "
        "and definitions, x 100, per system and source (QA sources; FEVER is left out)")}
    results["selective"] = preds.selective
    results.setdefault("deltas", {})
    results["files"] = {"results": str(paths["results"]), "predictions": preds.file, "summary": str(paths["summary"])}
    # One set: plots and summary first, the results file last, holding their hashes (and the number of
    # prediction rows), so a kill leaves results that describe exactly the files beside them or the old ones.
    if cfg.plots and not cfg.fast:
        results["files"]["plots"] = write_plots(results, paths["plots"])
    atomic_write_text(paths["summary"], format_summary(results))
    results["files_sha256"] = {str(p): sha256_file(p) for p in [paths["summary"], *results["files"].get("plots", [])]}
    results["prediction_rows"] = sum(len(r) for r in rows_by_tag.values())
    atomic_write_json(paths["results"], results)
    return results


def entailment_checker(cfg, paths: Mapping[str, Path]):
    """The --entailment checker, its cache beside the results unless --entailment-cache names one."""
    from ..entailment import run_checker

    return run_checker(cfg.entailment, cfg.trust_remote_code,
                       cfg.entailment_cache or f"{paths['results'].with_suffix('')}.entailment", cfg.entailment_batch_size)


def summarize(results: Mapping) -> str:
    from ..report import format_run_summary

    return format_run_summary(results)


def _stage():
    from ..cli import Stage

    return Stage("evaluate_sft", EvalConfig, run, summarize)


STAGE = _stage()
