# `make app` and `make test` work on a fresh Linux machine: they create .venv, install the CPU
# build of torch (pinned in constraints.txt) and everything else, then run.
PY ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
RUN := $(VENV)/bin/python
APT_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 \
	libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0 \
	libegl1 libgl1 libfontconfig1 libdbus-1-3 libpulse0 tesseract-ocr fonts-dejavu-core \
	fonts-liberation fonts-freefont-ttf \
	desktop-file-utils appstream

.PHONY: app test test-gpu lint system-deps venv venv-test clean

# the app needs only the `app` extra; the tests also need `train` (peft, matplotlib), `test`
# (pytest, transformers for cross-checks) and `gguf` (llama-cpp-python, built from source once:
# several minutes on 2 cores)
$(VENV)/.base: constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	touch $@

$(VENV)/.installed-app: $(VENV)/.base pyproject.toml
	$(PIP) install -q -c constraints.txt -e '.[app]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.base pyproject.toml
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -q -c constraints.txt -e '.[app,train,test,gguf]'
	touch $@ $(VENV)/.installed-app

venv: $(VENV)/.installed-app

venv-test: $(VENV)/.installed-test

# Debian packages for the Qt widgets, the virtual X screen and Tesseract; skipped where present.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# extra app flags: make app ARGS="--model ~/models/InfiniteVL"
app: system-deps venv
	$(VENV)/bin/infinitevl app $(ARGS)

test: system-deps venv-test
	$(RUN) -m pytest -q

test-gpu: venv-test
	$(RUN) -m pytest -q -m gpu

lint: venv-test
	$(VENV)/bin/ruff check engine kernels app tests benchmarks
	$(VENV)/bin/mypy app engine

clean:
	rm -rf $(VENV) build dist *.egg-info
