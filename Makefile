# make demo   set up .venv and run the main job (pipeline.py: all seven scripts) on the bundled sample with the embedded model (CPU)
# make test   set up .venv and run the test suite
# make bench  run the benchmarks in bench/ (prints ratios against a baseline measured in the same run)
PY := .venv/bin/python

.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	$(PY) -m pytest tests

bench: setup
	$(PY) bench/bench_build_data.py
	$(PY) bench/bench_sft.py
	$(PY) bench/bench_generation.py
	$(PY) bench/bench_rm.py
	$(PY) bench/bench_dpo.py
	$(PY) bench/bench_byo.py
	$(PY) bench/bench_dpo_head.py
