"""The main job: build_data, prompt_schema, train_sft, make_prefs (generate, judge), train_rm,
train_dpo and one evaluation of base / SFT / DPO, in order, reusing every step that is up to date.

    python pipeline.py                       # embedded defaults: bundled sample, SmolLM2-135M-Instruct, CPU
    python pipeline.py --dry-run             # what would run, what is reused
    python pipeline.py --force train_rm      # redo train_rm and every step after it
    python pipeline.py --preset gpu          # the notebook's Gemma-2 recipes (configs/*.yaml), on a GPU

Each step runs as the command a user would type; its outputs and run card stay on disk. The end
prints one table (base / SFT / DPO with intervals and deltas), the reward model's ROC-AUC and
gaming probes, and the time of each step (also in runs/pipeline/summary.md). Logic:
factuality/stages/pipeline.py (presets: configs/presets.yaml).
"""
import sys

from factuality import cli
from factuality.stages.pipeline import STAGE

if __name__ == "__main__":
    sys.exit(cli.main(STAGE, __doc__))
