# Everything runs from the project's own virtualenv, created on first use.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
DEMO_DIR ?= demo_output
BENCH_DIR ?= bench_output
LOCAL_BEAM := --direct_num_workers=2 --direct_running_mode=multi_processing

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	rm -rf $(DEMO_DIR)
	$(PYTHON) -m beam_pipelines.synthesize --output_dir $(DEMO_DIR)/raw \
		--num_rsna 600 --num_covid 240 --image_size 1024 --seed 7 $(LOCAL_BEAM)
	$(PYTHON) -m beam_pipelines.preprocess --rsna_dir $(DEMO_DIR)/raw/rsna --covid_dir $(DEMO_DIR)/raw/covid \
		--output_dir $(DEMO_DIR)/tfrecords --image_size 128 $(LOCAL_BEAM)

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) -m benchmarks.run --work_dir $(BENCH_DIR) --output BENCHMARKS.md

clean:
	rm -rf $(DEMO_DIR) $(BENCH_DIR)
