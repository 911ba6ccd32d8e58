# Everything runs from the project's own virtualenv, created on first use.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
DEMO_DIR ?= demo_output
BENCH_DIR ?= bench_output
LOCAL_BEAM := --direct_num_workers=2 --direct_running_mode=multi_processing
# Recipes run under bash with pipefail, so a step piped through QUIET_TF still fails the build.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# TensorFlow's C++ start-up chatter (no GPU found, CPU features) hides the demo's own output.
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Except these lines, which TensorFlow prints through absl before TF_CPP_MIN_LOG_LEVEL takes effect, in
# every process that imports it (Beam's worker processes too): no setting removes them, so the demo drops them.
TF_STARTUP_LINES := absl::InitializeLog\(\) is called|\] (oneDNN custom operations are on|Could not find cuda drivers|failed call to cuInit)
QUIET_TF := 2>&1 | sed -E '/$(TF_STARTUP_LINES)/d'
# -qq keeps pip's errors only: machines whose pip config adds an index lacking some packages get one
# "Location ... is ignored" warning per package otherwise.
PIP_INSTALL := $(PYTHON) -m pip install -qq --no-warn-script-location

.PHONY: install demo cloud-demo test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[test]'
	touch $@

# Each step prints a header saying where its outputs go, then its own summary table.
demo: export PYTHONUNBUFFERED := 1
demo: install
	@rm -rf $(DEMO_DIR)
	@echo "==> 1/5 synthesise 800 RSNA DICOMs and 800 covid images at 512² into $(DEMO_DIR)/raw/ (about a minute)"
	@$(PYTHON) -m synthetic --output_dir $(DEMO_DIR)/raw \
		--num_rsna 800 --num_covid 800 --image_size 512 --seed 7 $(LOCAL_BEAM) $(QUIET_TF)
	@echo "==> 2/5 preprocess: decode, split by patient, augment, write TFRecords to $(DEMO_DIR)/tfrecords/"
	@$(PYTHON) -c "import secrets; print(secrets.token_hex(32))" > $(DEMO_DIR)/patient_key
	@$(PYTHON) -m beam_pipelines.preprocess --rsna_dir $(DEMO_DIR)/raw/rsna --covid_dir $(DEMO_DIR)/raw/covid \
		--output_dir $(DEMO_DIR)/tfrecords --image_size 64 --augment auto --split 0.6,0.2,0.2 \
		--patient_key_file $(DEMO_DIR)/patient_key $(LOCAL_BEAM) $(QUIET_TF)
	@echo "==> 3/5 train ResNet50 from random weights on the CPU into $(DEMO_DIR)/model/ (a few minutes)"
	@# A random backbone has nothing to freeze: one whole-network stage (stage 1 skipped), 570 steps.
	@# --weights none also turns on the auxiliary classifier and the head's lower rate (trainer/model.py).
	@$(PYTHON) -m trainer.task --data_dir $(DEMO_DIR)/tfrecords --job_dir $(DEMO_DIR)/model \
		--image_size 64 --batch_size 32 --stage1_epochs 0 --stage2_epochs 30 \
		--stage2_learning_rate 1e-3 --steps_per_loop 25 --weights none $(QUIET_TF)
	@echo "==> 4/5 batch prediction over 8 synthetic DICOMs into $(DEMO_DIR)/predictions/"
	@(echo image_uri; cd $(DEMO_DIR) && files=(raw/rsna/stage_2_train_images/*.dcm) && \
		printf '%s\n' "$${files[@]:0:8}") > $(DEMO_DIR)/predict_inputs.csv
	@$(PYTHON) -m beam_pipelines.predict --model_dir $(DEMO_DIR)/model/export \
		--input_pattern $(DEMO_DIR)/predict_inputs.csv --output_path $(DEMO_DIR)/predictions/predictions $(QUIET_TF)
	@cat $(DEMO_DIR)/predictions/predictions-00000-of-00001.csv
	@echo "==> 5/5 one study with a Grad-CAM heat map, $(DEMO_DIR)/gradcam.png"
	@$(VENV)/bin/cxr-predict $(DEMO_DIR)/$$(sed -n 2p $(DEMO_DIR)/predict_inputs.csv) \
		--model_dir $(DEMO_DIR)/model --gradcam $(DEMO_DIR)/gradcam.png $(QUIET_TF)
	@echo "demo outputs are under $(DEMO_DIR)/ (evaluation: $(DEMO_DIR)/model/eval/, heat map: $(DEMO_DIR)/gradcam.png)"

# The walkthrough block of docs/cloud.md, every path on gs:// of a Cloud Storage emulator on 127.0.0.1.
cloud-demo: export PYTHONUNBUFFERED := 1
cloud-demo: install
	@$(PYTHON) -m infra.gcs_emulator --walkthrough docs/cloud.md $(QUIET_TF)

test: install
	$(PYTHON) -m pytest -q

# Leaves out the tests marked slow (worker processes, the storage emulator walkthrough; pytest.ini).
test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

bench: install
	$(PYTHON) -m benchmarks.run --work_dir $(BENCH_DIR) --output BENCHMARKS.md

clean:
	rm -rf $(DEMO_DIR) $(BENCH_DIR)
