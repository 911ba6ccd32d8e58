# Everything runs from the project's own virtualenv, created on first use.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
DEMO_DIR ?= demo_output
BENCH_DIR ?= bench_output
LOCAL_BEAM := --direct_num_workers=2 --direct_running_mode=multi_processing
# TensorFlow's C++ start-up chatter (no GPU found, CPU features) hides the demo's own output.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	rm -rf $(DEMO_DIR)
	@echo "==> 1/5 synthesising 600 RSNA DICOMs and 240 covid images at 1024² (about a minute)"
	$(PYTHON) -m beam_pipelines.synthesize --output_dir $(DEMO_DIR)/raw \
		--num_rsna 600 --num_covid 240 --image_size 1024 --seed 7 $(LOCAL_BEAM)
	@echo "==> 2/5 preprocess job: decode, split by patient, augment, write TFRecords"
	$(PYTHON) -m beam_pipelines.preprocess --rsna_dir $(DEMO_DIR)/raw/rsna --covid_dir $(DEMO_DIR)/raw/covid \
		--output_dir $(DEMO_DIR)/tfrecords --image_size 128 --augment auto $(LOCAL_BEAM)
	@echo "==> 3/5 training ResNet50 from random weights on the CPU (a few minutes)"
	$(PYTHON) -m trainer.task --data_dir $(DEMO_DIR)/tfrecords --job_dir $(DEMO_DIR)/model \
		--image_size 128 --batch_size 16 --stage1_epochs 3 --stage2_epochs 3 --steps_per_epoch 30 \
		--stage1_learning_rate 2e-3 --stage2_learning_rate 6e-4 --weights none
	@echo "==> 4/5 batch prediction over 8 synthetic DICOMs"
	(echo image_uri; cd $(DEMO_DIR) && ls raw/rsna/stage_2_train_images/*.dcm | head -n 8) \
		> $(DEMO_DIR)/predict_inputs.csv
	$(PYTHON) -m beam_pipelines.predict --model_dir $(DEMO_DIR)/model/export \
		--input_pattern $(DEMO_DIR)/predict_inputs.csv --output_path $(DEMO_DIR)/predictions/predictions
	cat $(DEMO_DIR)/predictions/predictions-00000-of-00001.csv
	@echo "==> 5/5 one study with a Grad-CAM heat map"
	$(VENV)/bin/cxr-predict $(DEMO_DIR)/$$(sed -n 2p $(DEMO_DIR)/predict_inputs.csv) \
		--model_dir $(DEMO_DIR)/model --gradcam $(DEMO_DIR)/gradcam.png
	@echo "demo outputs are under $(DEMO_DIR)/ (evaluation: $(DEMO_DIR)/model/eval/, heat map: $(DEMO_DIR)/gradcam.png)"

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) -m benchmarks.run --work_dir $(BENCH_DIR) --output BENCHMARKS.md

clean:
	rm -rf $(DEMO_DIR) $(BENCH_DIR)
