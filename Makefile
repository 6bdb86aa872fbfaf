# Two commands on a fresh Debian machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/quick
PRESET ?= quick
ARGS ?=

.PHONY: venv data browser demo standard committee test test-slow clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test,web,reports]'
	touch $@

venv: $(VENV)/.installed

# The Debian package puts Fashion-MNIST in /usr/share/datasets/fashion-mnist.
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "apt-get not found: pass --data-dir to a folder holding the Fashion-MNIST .gz files"; fi; \
	fi

# Headless Chromium for the page's browser test (skipped with a reason where it is absent).
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
	      || echo "make browser: installing chromium failed; the browser test will be skipped"; \
	  else echo "make browser: no apt-get (or no root/sudo); the browser test will be skipped"; fi; \
	fi

demo: venv data
	$(VENV)/bin/run-all --preset $(PRESET) --run $(RUN) $(ARGS)

# The well-trained study: at most 2 hours on a 2-core CPU (bf16 where the CPU has it natively).
standard: venv data
	$(VENV)/bin/run-all --preset standard --run runs/standard $(ARGS)

# standard plus seed committees and int8 copies of the tiny models, val 30%, evaluated from s = -0.1%
committee: venv data
	$(VENV)/bin/run-all --preset standard-committee --run runs/standard-committee $(ARGS)

test: venv browser
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV)
