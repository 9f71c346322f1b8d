# `make demo` and `make test` are the whole set-up: each creates .venv from the requirement files
# when it is missing or older than them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DATA=/path/to/VOCdevkit/VOC2012 runs the demo on real VOC instead of the embedded sample.
DATA ?=
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=
# Two test processes, a test file each at a time: the serial suite left half of the two cores
# idle (waiting on subprocesses, servers, file writes); 13.5 min instead of 24 (docs/layout.md).
# XDIST= runs the suite in one process.
XDIST ?= -n 2 --dist loadfile

.PHONY: test demo venv clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) $(PYTEST_ARGS) tests

clean-demo:
	rm -rf $(DEMO_DIR)

# The whole loop on the embedded sample dataset (or on real VOC with DATA=.../VOC2012):
# write the data, convert it, train, evaluate with multi-scale + flip.
DEMO_VOC := $(if $(DATA),$(DATA),$(DEMO_DIR)/sample_voc)
DEMO_TRAIN_FLAGS ?= --num-layers 50 --output-stride 16 --batch-size 8 --input-size 97 \
	--num-steps 600 --learning-rate 0.02 --bn-decay 0.99 --log-every 50 --save-pred-every 300

demo: $(STAMP)
	@start=$$(date +%s); \
	if [ -z "$(DATA)" ]; then $(PY) make_sample_dataset.py --output-dir $(DEMO_VOC); fi && \
	for split in train val; do \
	  $(PY) convert_voc_to_tfrecord.py --voc-dir $(DEMO_VOC) --split-name $$split \
	    --output-dir $(DEMO_DIR)/records || exit 1; \
	done && \
	$(PY) train.py --data-dir $(DEMO_DIR)/records --split-name train \
	  --snapshot-dir $(DEMO_DIR)/train $(DEMO_TRAIN_FLAGS) && \
	$(PY) evaluate.py --restore-from $(DEMO_DIR)/train --data-dir $(DEMO_DIR)/records \
	  --split-name val --scales 0.5,0.75,1.0,1.25,1.5,1.75 --flip \
	  --output-json $(DEMO_DIR)/metrics.json --save-predictions $(DEMO_DIR)/predictions && \
	echo "demo finished in $$(( $$(date +%s) - start )) s; metrics in $(DEMO_DIR)/metrics.json"
