# Two commands: `make demo` and `make test`. Each creates .venv when it is missing or
# stale (pyproject.toml or constraints.txt changed since the last install), then runs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint lock clean kotlin

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/devicetune simulate simulations/quickstart.toml --out out/quickstart --overwrite

# Two workers: see tests/conftest.py for how the suite is split between them.
test: $(STAMP) kotlin
	$(PY) -m pytest -n 2 --dist loadgroup

# Debian's Kotlin compiler (and OpenJDK 17): tests/examples/test_kotlin_client.py compiles
# and runs the app's plain-JVM Kotlin with it. Skipped when kotlinc is already there.
kotlin:
	@command -v kotlinc >/dev/null || { \
		SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y kotlin; }
	@kotlinc -version 2>&1 | grep -q kotlinc-jvm

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

# Re-resolve every dependency in one clean install and record the result.
lock:
	rm -rf /tmp/devicetune-lock && $(PYTHON) -m venv /tmp/devicetune-lock
	/tmp/devicetune-lock/bin/python -m pip install --quiet --upgrade "pip>=24"
	/tmp/devicetune-lock/bin/python -m pip install --quiet -e ".[dev]"
	/tmp/devicetune-lock/bin/python -m pip check
	/tmp/devicetune-lock/bin/python -m pip freeze --exclude-editable | grep -v '^pip==' > constraints.txt

clean:
	rm -rf $(VENV) out runs .pytest_cache
