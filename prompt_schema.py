"""The prompt format and the output JSON schema: write them, check the validator, show a prompt.

    python prompt_schema.py save --prompts-dir prompts      # templates + output_schema.json + an example
    python prompt_schema.py test                           # validator on good/bad outputs; exit 1 on failure
    python prompt_schema.py render --data data/processed/test.jsonl --index 0 --model embedded:smollm2-135m-instruct
    python prompt_schema.py parse '{"answer": "Paris", "citations": ["E1"], "confidence": 0.9}' --ids E1,E2
    python prompt_schema.py schema                         # the output JSON Schema

The templates and schema live in factuality/prompts.py; prompts/ is their written form (scripts
read it back with --prompts-dir). `render` prints the prompt exactly as a model sees it, through
the tokenizer's chat template when the model has one (plain text without --model), its token
count, and the gold target. Logic: factuality/stages/prompt_schema.py.
"""
import sys

from factuality import cli
from factuality.stages.prompt_schema import (  # noqa: F401 - importable names
    CASES,
    STAGE,
    Case,
    check_case,
    example_for_docs,
    render,
    run_tests,
    save,
)


def main(argv=None) -> int:
    return cli.main(STAGE, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
