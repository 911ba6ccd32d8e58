# Everything runs from the project's own virtualenv, created on first use.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
DEMO_DIR ?= demo_output
BENCH_DIR ?= bench_output
# e.g. BENCH_SECTIONS=real_data,dicom_node re-measures those and keeps the other sections (benchmarks/run.py).
BENCH_SECTIONS ?=
# The real radiographs of `make real-data` (../shared/real-cxr/README.md says where they come from).
REAL_CXR ?= ../shared/real-cxr
REAL_EXTERNAL ?= ../shared/real-cxr-figure1
REAL_DIR ?= real_output
# A fixed key, so a rerun splits the same patients the same way; BENCHMARKS.md reports three keys.
REAL_KEY ?= real-cxr-patient-key-1
REAL_IMAGE_SIZE ?= 128
REAL_EPOCHS ?= 20
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

.PHONY: install demo real-data pacs-demo cloud-demo test test-fast bench clean

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
	@echo "==> evaluation: shortcut audit, decision rule and calibration ($(DEMO_DIR)/model/eval/report.txt, $(DEMO_DIR)/model/MODEL_CARD.md)"
	@sed -n '/^SHORTCUT AUDIT/,/^VAL /{/^VAL /d;p}' $(DEMO_DIR)/model/eval/report.txt
	@sed -n '/^Calibration, before/,/^$$/p' $(DEMO_DIR)/model/eval/report.txt
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

# Real chest X-rays: preprocess → train from random weights on the CPU → evaluate, with the external
# COVID-19 collection scored by the exported model it never trained on.
real-data: export PYTHONUNBUFFERED := 1
real-data: install
	@test -f $(REAL_CXR)/labels.csv || { echo "make real-data needs $(REAL_CXR)/labels.csv: the real-cxr set (NIH ChestX-ray8 + ieee8023 COVID-19 images as published by Ozturk et al. 2020, github.com/muhammedtalo/COVID-19); set REAL_CXR=DIR, or preprocess its No_findings/Pneumonia/Covid-19 folders with --image_folder (README, Sources)"; exit 1; }
	@rm -rf $(REAL_DIR)
	@echo "==> 1/3 preprocess $(REAL_CXR) at $(REAL_IMAGE_SIZE)² into $(REAL_DIR)/tfrecords/ (split by patient under REAL_KEY)"
	@$(PYTHON) -m beam_pipelines.preprocess --csv $(REAL_CXR)/labels.csv --output_dir $(REAL_DIR)/tfrecords \
		--image_size $(REAL_IMAGE_SIZE) --augment auto --split 0.6,0.2,0.2 --patient_key $(REAL_KEY) \
		$(LOCAL_BEAM) $(QUIET_TF)
	@echo "==> 2/3 train ResNet50 from random weights on the CPU into $(REAL_DIR)/model/ (about 20 minutes on 2 cores at 128², with its evaluation)"
	@# The demo's recipe at 128² over 20 epochs with a cosine decay (docs/trainer.md, "Real chest X-rays");
	@# the default rule calls COVID-19 from the threshold that finds 95% of val's cases. --deterministic: a
	@# rerun on this machine gives the same model (3% slower). --test_time_zooms: evaluation and the export
	@# average the image's probabilities with those of 5% zooms in and out (chosen on val).
	@$(PYTHON) -m trainer.task --data_dir $(REAL_DIR)/tfrecords --job_dir $(REAL_DIR)/model \
		--image_size $(REAL_IMAGE_SIZE) --batch_size 32 --stage1_epochs 0 --stage2_epochs $(REAL_EPOCHS) \
		--stage2_learning_rate 1e-3 --learning_rate_decay cosine --steps_per_loop 25 --weights none \
		--deterministic --test_time_zooms 0.95,1.05 $(QUIET_TF)
	@echo "==> 3/3 external COVID-19 images ($(REAL_EXTERNAL)), scored by the exported model into $(REAL_DIR)/external/"
	@$(PYTHON) -m trainer.evaluate --model_dir $(REAL_DIR)/model --csv $(REAL_EXTERNAL)/labels.csv \
		--output_dir $(REAL_DIR)/external $(QUIET_TF)
	@$(PYTHON) -m benchmarks.framing_sheet --csv $(REAL_CXR)/labels.csv --output $(REAL_DIR)/framing.png
	@$(PYTHON) -m benchmarks.real_data --summarize $(REAL_DIR)

# A local Orthanc that receives the demo's synthetic studies and shows the node's answers; Ctrl-C stops it all.
# Not piped through QUIET_TF: Ctrl-C would end sed first and break the pipe (the node logs to a file).
pacs-demo: export PYTHONUNBUFFERED := 1
pacs-demo: install
	@test -d $(DEMO_DIR)/model/export || { echo "run 'make demo' first: the PACS demo uses its model and studies"; exit 1; }
	@bash infra/orthanc/install.sh
	@$(PYTHON) -m infra.orthanc.pacs_demo --demo_dir $(DEMO_DIR)

# The walkthrough block of docs/cloud.md, every path on gs:// of a Cloud Storage emulator on 127.0.0.1.
cloud-demo: export PYTHONUNBUFFERED := 1
cloud-demo: install
	@$(PYTHON) -m infra.gcs_emulator --walkthrough docs/cloud.md $(QUIET_TF)

# Orthanc, the PACS of the DICOM node's tests, comes from Debian packages (infra/orthanc/install.sh).
test: install
	bash infra/orthanc/install.sh
	$(PYTHON) -m pytest -q

# Leaves out the tests marked slow (worker processes, the storage emulator walkthrough; pytest.ini).
test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

bench: install
	$(PYTHON) -m benchmarks.run --work_dir $(BENCH_DIR) --output BENCHMARKS.md $(if $(BENCH_SECTIONS),--sections $(BENCH_SECTIONS))

clean:
	rm -rf $(DEMO_DIR) $(BENCH_DIR) $(REAL_DIR)
