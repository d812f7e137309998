# gofiddle: `make run` starts the server, `make test` runs every test.
# Both install what they need first (a venv in .venv; Debian packages when root).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
APT_PACKAGES := bubblewrap util-linux libseccomp2
TEST_APT_PACKAGES := chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint system-deps test-system-deps frontend clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

# bubblewrap is the sandbox; install it when missing (Debian)
system-deps:
	@command -v bwrap >/dev/null 2>&1 && command -v prlimit >/dev/null 2>&1 || { \
	  echo "installing $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); }

test-system-deps: system-deps
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing $(TEST_APT_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(TEST_APT_PACKAGES); }

run: system-deps $(STAMP)
	$(VENV)/bin/gofiddle serve --host $(HOST) --port $(PORT)

test: test-system-deps $(STAMP)
	$(VENV)/bin/ruff check backend tests bench
	$(PY) -m pytest -q -rfE

lint: $(STAMP)
	$(VENV)/bin/ruff check backend tests bench

# rebuild the committed editor bundle in static/ (needs Node.js + npm)
frontend:
	cd frontend && npm ci && npm run build

bench: system-deps $(STAMP)
	$(VENV)/bin/gofiddle bench

clean:
	rm -rf $(VENV) data .cache
