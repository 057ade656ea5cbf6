"""notebooks/pipeline.ipynb, executed end to end (nbclient) on the tiny configuration, so it cannot
rot: the config choice is one parameters cell (papermill style: the test injects `PRESET = "tiny"`
after it), every step runs the command pipeline.py runs, and each stage's outputs show inline,
down to the original notebook's analysis cell on this run's files."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "pipeline.ipynb"


def _parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell is tagged 'parameters'"
    return tagged[0]


def test_the_config_choice_is_one_cell_and_the_commands_are_pipeline_py_s():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    i = _parameters_cell(nb)
    assert nb.cells[i].source.strip().splitlines()[-1] == 'PRESET = "cpu"', "the embedded CPU default as it stands"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "steps_for(PRESET)" in code and "run_pipeline(" in code
    assert "train_sft.py -c" not in code and "--pairs-file" not in code, "no command is written out twice"


def test_notebook_runs_end_to_end_on_the_tiny_configuration(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # A copy of the scripts and configs: the outputs land in tmp_path, the package comes from PYTHONPATH.
    for script in ROOT.glob("*.py"):
        shutil.copy(script, tmp_path)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    i = _parameters_cell(nb)
    injected = nbformat.v4.new_code_cell('PRESET = "tiny"')
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, injected)
    for k, v in {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                 "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(k, v)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path / "notebooks")}})
    client.execute()  # a failing cell raises CellExecutionError with its traceback

    def text(cell) -> str:
        return "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                       for o in cell.get("outputs", []))

    def images(cell) -> int:
        return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))

    code = [c for c in nb.cells if c.cell_type == "code"]
    markers = {"data": 'step("tiny_model"', "sft": 'step("train_sft")', "prefs": 'step("make_prefs generate"',
               "rm": 'step("train_rm")', "dpo": 'step("train_dpo")', "eval": 'step("evaluate")',
               "analysis": "Load and visualize results", "job": "PipelineConfig(preset=PRESET), runner"}
    cell = {k: next(c for c in code if m in c.source) for k, m in markers.items()}
    assert "data/processed/train.jsonl:" in text(cell["data"]) and '"evidence"' in text(cell["data"])
    assert images(cell["sft"]) == 1, "the SFT loss curve"
    assert "pairs kept" in text(cell["prefs"]) and '"chosen"' in text(cell["prefs"]), "statistics and a sample pair"
    assert images(cell["rm"]) == 2 and "Gaming probes" in text(cell["rm"]), "curves, reliability diagram, probes"
    assert images(cell["dpo"]) == 1, "DPO loss and reward margin"
    # the table; the by-bucket and by-source plots; the risk-coverage curve (the constrained SFT and DPO
    # answers carry their token probability as confidence)
    assert images(cell["eval"]) == 3 and "| Correct & grounded F1 |" in text(cell["eval"]), "table, plots, risk-coverage"
    assert "EM improvement:" in text(cell["analysis"]) and "Citation improvement:" in text(cell["analysis"])
    assert images(cell["analysis"]) == 1, "the reward model's loss and validation AUC, as the original cell plots them"
    summary = text(cell["job"])
    assert "| evaluate | reused |" in summary and "| train_sft | reused |" in summary, "a second pass reuses every step"
    assert (tmp_path / "runs" / "eval-pipeline" / "eval_results.json").exists()
    assert (tmp_path / "runs" / "tiny-model" / "config.json").exists()


@pytest.fixture(autouse=True)
def _needs_nbclient():
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
