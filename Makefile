# seed_hf: `make demo` (the main job) and `make test` on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A second environment with the oldest supported transformers (constraints-oldest.txt).
VENV_OLDEST ?= .venv-oldest
PY_OLDEST := $(VENV_OLDEST)/bin/python
CORE_TESTS ?= tests/test_losses.py tests/test_trainer.py tests/test_resume.py tests/test_hub.py \
  tests/test_examples.py::test_help_of_every_example
DEMO_DIR ?= outputs/demo
DEMO_TEACHER_STEPS ?= 500
DEMO_STUDENT_STEPS ?= 300
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup setup-oldest fashion-mnist demo study test test-oldest test-all lint clean

setup: $(VENV)/.installed fashion-mnist

fashion-mnist:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "Installing Fashion-MNIST (dataset-fashion-mnist)"; \
	    (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)); \
	  else echo "WARNING: Fashion-MNIST missing and apt-get unavailable"; fi; \
	fi

# setup.cfg declares ranges; constraints.txt holds the exact tested versions.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

setup-oldest: $(VENV_OLDEST)/.installed fashion-mnist

# constraints.txt with the lines of constraints-oldest.txt in place of its own.
$(VENV_OLDEST)/.installed: setup.cfg pyproject.toml constraints.txt constraints-oldest.txt
	test -x $(PY_OLDEST) || $(PYTHON) -m venv $(VENV_OLDEST)
	$(PY_OLDEST) -m pip install -q --upgrade pip
	awk 'function key(line) { sub(/[=<>!~;[ ].*/, "", line); gsub(/_/, "-", line); return tolower(line) } \
	  /^[[:space:]]*(#|$$)/ { next } \
	  FNR == NR { print; old[key($$0)] = 1; next } !(key($$0) in old)' \
	  constraints-oldest.txt constraints.txt > $(VENV_OLDEST)/constraints.txt
	$(PY_OLDEST) -m pip install -q -c $(VENV_OLDEST)/constraints.txt -e ".[dev]"
	$(PY_OLDEST) -m pip check
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

# The core tests (loss, trainer, resume, hub export/load, examples' --help) on the oldest
# supported transformers; CI runs it after `make test`.
test-oldest: setup-oldest
	$(PY_OLDEST) -c "import transformers, timm, huggingface_hub as h; print('oldest stack: transformers', transformers.__version__, 'timm', timm.__version__, 'huggingface_hub', h.__version__)"
	$(PY_OLDEST) -m pytest -q -x $(CORE_TESTS)

test-all: setup
	$(PY) -m pytest -q -m "" tests

lint: setup
	$(PY) -m ruff check seed_hf examples tests benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
