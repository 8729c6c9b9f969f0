# asl: the two commands of the README.
#   make test   set up .venv (torch, mmcv built once into a cache, mmseg) and run the tests
#   make demo   search the mIoU loss on the embedded demo data, re-train with it and with
#               cross-entropy, print both
PYTHON_VENV := .venv/bin/python
# pytest-xdist workers for make test: one per core, at most 4 (TEST_WORKERS=1 runs in one
# process); each takes the next test when it is free (--maxschedchunk 1), slow tests first
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: install test demo benchmark clean

install:
	bash tools/install.sh

test: install
	$(PYTHON_VENV) -m pytest -q -n $(TEST_WORKERS) --maxschedchunk 1 tests

demo: install
	$(PYTHON_VENV) tools/demo.py

benchmark: install
	$(PYTHON_VENV) tools/analysis/benchmark_loss.py

clean:
	rm -rf build asl/engines/cpp/_C*.so work_dirs .pytest_cache
