"""prompt_schema.py's logic: write the prompt format and output schema, check the validator,
render one prompt, parse one output.

The templates and schema themselves live in factuality/prompts.py; prompts/ is their written
form (scripts read it back with --prompts-dir).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..prompts import (
    OUTPUT_SCHEMA,
    REFUSAL_ANSWER,
    PromptTemplates,
    completion_text,
    gold_target,
    parse_output,
    render_prompt,
)
from ..records import RecordError, atomic_write_text, read_examples

COMMANDS = ("save", "test", "render", "parse", "schema")


@dataclass
class PromptSchemaConfig:
    """Options of prompt_schema.py: a command and what it reads."""

    command: str = field(default="save", metadata={
        "positional": True, "choices": list(COMMANDS),
        "help": "save: write templates, output schema and an example prompt to --prompts-dir; test: check the "
                "validator on good and bad outputs (exit 1 on failure); render: print one example's prompt; "
                "parse: parse one model output (TEXT, '-' for stdin); schema: print the output JSON Schema"})
    text: str | None = field(default=None, metadata={"positional": True, "help": "parse: the model output ('-' reads stdin)"})
    prompts_dir: str | None = field(default=None, metadata={
        "help": "save: directory to write (default: prompts); render: templates to render with (default: built-in)"})
    model: str | None = field(default=None, metadata={
        "help": "hub id / path / embedded:smollm2-135m-instruct: render through its chat template and count tokens "
                "(default: the plain fallback, which needs no model)"})
    data: str | None = field(default=None, metadata={"help": "render: processed JSONL (default: a built-in fixture example)"})
    index: int = field(default=0, metadata={"help": "render: which example of --data (0-based; negative counts from the end)"})
    id: str | None = field(default=None, metadata={"help": "render: pick the example by id instead of --index"})
    ids: list[str] | None = field(default=None, metadata={
        "help": "parse: the evidence ids shown to the model, comma-separated (checks citations)"})

    def validate(self) -> None:
        if self.command == "parse" and self.text is None:
            raise ConfigError("parse needs the model output: prompt_schema.py parse '{\"answer\": ...}' (or - for stdin)")
        if self.command != "parse" and self.text is not None:
            raise ConfigError(f"{self.command} takes no positional text (got {self.text!r})")


EVIDENCE_IDS = ("E1", "E2", "E3")


@dataclass(frozen=True)
class Case:
    """One validator case: model output text, and what parse_output must say about it."""

    name: str
    text: object
    valid: bool
    reason_has: str = ""          # substring the reason must contain (invalid cases)
    answer: str | None = None     # salvaged/parsed answer expected (None: not checked)
    refusal: bool | None = None
    citations: tuple[str, ...] | None = None


CASES: tuple[Case, ...] = (
    Case("valid", '{"answer": "Linda Davis", "citations": ["E2"], "confidence": 0.9}', True,
         answer="Linda Davis", refusal=False, citations=("E2",)),
    Case("valid, two citations", '{"answer": "1993", "citations": ["E1", "E3"], "confidence": 1}', True,
         citations=("E1", "E3")),
    Case("valid refusal", f'{{"answer": "{REFUSAL_ANSWER}", "citations": [], "confidence": 0.0}}', True,
         refusal=True, citations=()),
    Case("refusal, other case and full stop", '{"answer": "Insufficient evidence.", "citations": [], "confidence": 0}',
         False, "schema", refusal=True),
    Case("prose around JSON", 'Sure! Here is the answer:\n{"answer": "Paris", "citations": ["E1"], "confidence": 0.8}\nHope it helps.',
         True, answer="Paris"),
    Case("code fence", '```json\n{"answer": "Paris", "citations": ["E1"], "confidence": 0.8}\n```', True, answer="Paris"),
    Case("unclosed code fence", '```json\n{"answer": "Paris", "citations": ["E1"], "confidence": 0.8}', True, answer="Paris"),
    Case("truncated JSON", '{"answer": "Linda Davis", "citations": ["E2"', False, "truncated", answer="Linda Davis",
         citations=("E2",)),
    Case("truncated inside answer", '{"answer": "Linda Da', False, "truncated"),
    Case("wrong type: citations a string", '{"answer": "Paris", "citations": "E1", "confidence": 0.8}', False,
         "schema: citations"),
    Case("wrong type: confidence a string", '{"answer": "Paris", "citations": ["E1"], "confidence": "high"}', False,
         "schema: confidence"),
    Case("wrong type: answer a number", '{"answer": 1993, "citations": ["E1"], "confidence": 0.8}', False, "schema: answer"),
    Case("confidence above 1", '{"answer": "Paris", "citations": ["E1"], "confidence": 7}', False, "schema: confidence"),
    Case("missing field", '{"answer": "Paris", "citations": ["E1"]}', False, "confidence"),
    Case("extra field", '{"answer": "Paris", "citations": ["E1"], "confidence": 0.8, "reason": "x"}', False, "schema"),
    Case("unknown id", '{"answer": "Paris", "citations": ["E9"], "confidence": 0.8}', False, "not among the evidence ids"),
    Case("malformed id", '{"answer": "Paris", "citations": ["passage 1"], "confidence": 0.8}', False, "schema: citations"),
    Case("duplicate citations", '{"answer": "Paris", "citations": ["E1", "E1"], "confidence": 0.8}', False, "duplicate"),
    Case("answer without citations", '{"answer": "Paris", "citations": [], "confidence": 0.8}', False, "schema: citations"),
    Case("refusal with citations", f'{{"answer": "{REFUSAL_ANSWER}", "citations": ["E1"], "confidence": 0.1}}', False,
         "schema: citations", refusal=True),
    Case("empty answer", '{"answer": "", "citations": ["E1"], "confidence": 0.5}', False, "schema: answer"),
    Case("two JSON objects", '{"answer": "Paris", "citations": ["E1"], "confidence": 0.8} {"answer": "Rome", '
         '"citations": ["E2"], "confidence": 0.2}', False, "more than one"),
    Case("JSON array, not object", '["Paris", ["E1"], 0.8]', False, "no JSON object"),
    Case("prose only", "The answer is Paris.", False, "no JSON object"),
    Case("empty", "", False, "empty"),
    Case("whitespace only", "  \n ", False, "empty"),
    Case("not text", None, False, "not text"),
)


def check_case(case: Case, evidence_ids=EVIDENCE_IDS) -> str | None:
    """None when parse_output behaves as the case says, else what went wrong."""
    try:
        got = parse_output(case.text, evidence_ids)
    except Exception as e:  # the parser must never raise
        return f"raised {type(e).__name__}: {e}"
    if got.valid != case.valid:
        return f"valid={got.valid}, expected {case.valid} (reason: {got.reason})"
    if not case.valid and case.reason_has and case.reason_has not in (got.reason or ""):
        return f"reason {got.reason!r} does not mention {case.reason_has!r}"
    if case.valid and got.reason:
        return f"valid output has a reason: {got.reason!r}"
    if case.answer is not None and got.answer != case.answer:
        return f"answer {got.answer!r}, expected {case.answer!r}"
    if case.refusal is not None and got.refusal != case.refusal:
        return f"refusal={got.refusal}, expected {case.refusal}"
    if case.citations is not None and tuple(got.citations) != case.citations:
        return f"citations {got.citations}, expected {list(case.citations)}"
    return None


def run_tests(cases=CASES, out=None) -> int:
    """Print a table of the cases; returns the number of failures."""
    out = out or sys.stdout
    failures = 0
    width = max(len(c.name) for c in cases)
    print(f"{'case':<{width}}  {'expect':<7} {'got':<7} result / reason", file=out)
    for case in cases:
        problem = check_case(case)
        got = parse_output(case.text, EVIDENCE_IDS)
        failures += problem is not None
        verdict = "ok" if problem is None else f"FAIL: {problem}"
        exp = "valid" if case.valid else "invalid"
        act = "valid" if got.valid else "invalid"
        print(f"{case.name:<{width}}  {exp:<7} {act:<7} {verdict}{'' if got.valid else f'  ({got.reason})'}", file=out)
    print(f"{len(cases) - failures}/{len(cases)} cases pass", file=out)
    return failures


def example_for_docs() -> dict:
    from ..testing import make_example

    return make_example(7, source="hotpotqa", gold_position=1)


def save(prompts_dir: str | Path, model: str | None = None) -> list[Path]:
    """Write the templates, output_schema.json, and an example rendered prompt + gold target."""
    d = Path(prompts_dir)
    written = PromptTemplates().save(d)
    ex = example_for_docs()
    tok = _tokenizer(model) if model else None
    atomic_write_text(d / "example_prompt.txt", render_prompt(ex, tok))
    atomic_write_text(d / "example_target.json", gold_target(ex) + "\n")
    atomic_write_text(d / "example_completion.txt", completion_text(ex, tok))
    readme = (
        "# Prompt format (written by `python prompt_schema.py save --prompts-dir prompts`; do not edit by hand)\n\n"
        "- `system.txt`: the system instruction (folded into the user turn for chat templates without a system role)\n"
        "- `user_question.txt` / `user_claim.txt`: the user turn for questions / FEVER claims; `{evidence}` is the\n"
        "  evidence chunks, each rendered with `evidence_chunk.txt` and separated by a blank line\n"
        "- `output_schema.json`: the JSON Schema of the one JSON object the model must answer with; a refusal is\n"
        f"  `{{\"answer\": \"{REFUSAL_ANSWER}\", \"citations\": [], ...}}`\n"
        "- `example_prompt.txt`: a fixture example rendered " + ("through the chat template of " + model if model else
                                                                    "with the plain fallback (no chat template)") + "\n"
        "- `example_target.json`: its gold target (what SFT trains on); `example_completion.txt`: the target plus the\n"
        "  end-of-turn token the model learns to stop with\n\n"
        "Scripts read the templates back with `--prompts-dir prompts` (factuality.prompts.PromptTemplates.from_dir).\n"
    )
    atomic_write_text(d / "README.md", readme)
    return written + [d / n for n in ("example_prompt.txt", "example_target.json", "example_completion.txt", "README.md")]


def _tokenizer(model: str):
    from ..modeling import load_tokenizer

    return load_tokenizer(model)


def render(data: str | None, index: int, model: str | None, prompts_dir: str | None, example_id: str | None = None) -> str:
    if data:
        examples = read_examples(data)
        if example_id is not None:
            found = [e for e in examples if e["id"] == example_id]
            if not found:
                raise RecordError(f"{data}: no example with id {example_id!r}; pick one of the file's ids or use --index")
            ex = found[0]
        else:
            if not -len(examples) <= index < len(examples):
                raise RecordError(f"{data}: --index {index} is out of range (the file has {len(examples)} examples)")
            ex = examples[index]
    else:
        ex = example_for_docs()
    templates = PromptTemplates.from_dir(prompts_dir)
    tok = _tokenizer(model) if model else None
    prompt = render_prompt(ex, tok, templates)
    lines = [f"# example {ex['id']} (answerable={ex['answerable']}, support={[s['chunk_id'] for s in ex['support']]})",
             prompt if prompt.endswith("\n") else prompt + "\n"]
    if tok is not None:
        from ..prompts import tokenize_prompt

        lines.append(f"# {len(tokenize_prompt(tok, prompt))} prompt tokens ({model})")
    lines.append(f"# gold target: {gold_target(ex)}")
    return "\n".join(lines)


def run(cfg: PromptSchemaConfig) -> dict:
    """Run one command; returns {"command", "output" (text to print), "exit_code", ...}."""
    if cfg.command == "save":
        written = save(cfg.prompts_dir or "prompts", cfg.model)
        return {"command": "save", "written": [str(p) for p in written],
                "output": "\n".join(f"wrote {p}" for p in written), "exit_code": 0}
    if cfg.command == "test":
        import io

        buf = io.StringIO()
        failures = run_tests(out=buf)
        return {"command": "test", "failures": failures, "output": buf.getvalue().rstrip(), "exit_code": int(failures > 0)}
    if cfg.command == "render":
        return {"command": "render", "output": render(cfg.data, cfg.index, cfg.model, cfg.prompts_dir, cfg.id).rstrip("\n"),
                "exit_code": 0}
    if cfg.command == "parse":
        text = sys.stdin.read() if cfg.text == "-" else cfg.text
        parsed = parse_output(text, cfg.ids)
        return {"command": "parse", "parsed": parsed.to_dict(),
                "output": json.dumps(parsed.to_dict(), indent=2, ensure_ascii=False), "exit_code": 0}
    return {"command": "schema", "output": json.dumps(OUTPUT_SCHEMA, indent=2), "exit_code": 0}


def _stage():
    from ..cli import Stage

    return Stage("prompt_schema", PromptSchemaConfig, run, lambda r: r.get("output", ""))


STAGE = _stage()
