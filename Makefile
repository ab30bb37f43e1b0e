# The two commands of the README:
#   make demo   set up, then run the whole pipeline on the bundled demo data (CPU, embedded services)
#   make test   set up, then run the test suite
.PHONY: setup setup-serve reference demo test bench up clean

setup:
	scripts/setup.sh pipeline serve

reference:
	scripts/setup.sh reference

demo: setup
	.venv/bin/openchat demo

test: setup reference
	.venv/bin/python -m pytest $(PYTEST_ARGS)

bench: setup reference
	.venv/bin/python bench/pretokenize_bench.py

up: setup
	.venv/bin/openchat up

clean:
	rm -rf .venv .venv-serve runs demo-output .pytest_cache
