# seed_hf: `make demo` (the main job) and `make test` on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= outputs/demo
DEMO_TEACHER_STEPS ?= 500
DEMO_STUDENT_STEPS ?= 300
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup demo study test test-all lint clean

setup: $(VENV)/.installed
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "Installing Fashion-MNIST (dataset-fashion-mnist)"; \
	    (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)); \
	  else echo "WARNING: Fashion-MNIST missing and apt-get unavailable"; fi; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	@echo "== 1/3 MoCo-v2 teacher (ResNet-18) on Fashion-MNIST =="
	$(PY) examples/run_moco.py --architecture resnet18 --queue_size 4096 --key_bn_splits 4 \
	  --momentum 0.99 --temperature 0.1 --base_learning_rate 0.06 \
	  --per_device_train_batch_size 256 --max_steps $(DEMO_TEACHER_STEPS) --warmup_steps 20 \
	  --save_steps 100 --save_total_limit 1 --logging_steps 25 --use_cpu --disable_tqdm false \
	  --output_dir $(DEMO_DIR)/teacher
	@echo "== 2/3 SEED: distil the teacher into MobileNetV3-Small =="
	$(PY) examples/run_seed.py --teacher_name_or_path $(DEMO_DIR)/teacher \
	  --student_architecture mobilenetv3_small_100 --queue_size 4096 --base_learning_rate 0.06 \
	  --per_device_train_batch_size 256 --max_steps $(DEMO_STUDENT_STEPS) --warmup_steps 20 \
	  --save_steps 100 --save_total_limit 1 --logging_steps 25 --use_cpu --disable_tqdm false \
	  --output_dir $(DEMO_DIR)/student
	@echo "== 3/3 weighted kNN (k=200, tau=0.07) on the test split =="
	$(PY) examples/run_eval.py --models $(DEMO_DIR)/teacher $(DEMO_DIR)/student pixels \
	  --output_file $(DEMO_DIR)/eval_results.json
	@echo "Student written to $(DEMO_DIR)/student"

study: setup
	$(PY) examples/run_fmnist_study.py --output_dir results/fmnist

test: setup
	$(PY) -m pytest -q -x tests

test-all: setup
	$(PY) -m pytest -q -m "" tests

lint: setup
	$(PY) -m ruff check seed_hf examples tests benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
