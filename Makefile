# stepbuild — make targets. `make demo` and `make test` set everything up first.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: setup demo test test-unit fuzz lint bench clean java-demo multiarch-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

# Busybox rootfs tarballs for the samples, from Debian's busybox-static (installed by setup).
samples/%/busybox-rootfs.tar: scripts/make-busybox-rootfs.sh | setup
	bash scripts/make-busybox-rootfs.sh $@

# The same for linux/arm64, from Debian's busybox-static:arm64 (setup adds the architecture).
samples/%/arm64-busybox-rootfs.tar: scripts/make-arm64-busybox-rootfs.sh | setup
	bash scripts/make-arm64-busybox-rootfs.sh $@

# samples/multiarch takes one rootfs per architecture, named by it (this machine is amd64).
samples/multiarch/busybox-rootfs-amd64.tar: scripts/make-busybox-rootfs.sh | setup
	bash scripts/make-busybox-rootfs.sh $@

samples/multiarch/busybox-rootfs-arm64.tar: scripts/make-arm64-busybox-rootfs.sh | setup
	bash scripts/make-arm64-busybox-rootfs.sh $@

# One Stepfile for linux/amd64 and linux/arm64 (the arm64 RUN under QEMU): an image index;
# then the arm64 image runs, emulated.
multiarch-demo: setup samples/multiarch/busybox-rootfs-amd64.tar \
		samples/multiarch/busybox-rootfs-arm64.tar
	$(VENV)/bin/stepbuild build --platform linux/amd64,linux/arm64 -t multiarch samples/multiarch
	$(VENV)/bin/stepbuild run --platform linux/arm64 multiarch

# The main job on a built-in default: build the hello sample, then run the result.
demo: setup samples/hello/busybox-rootfs.tar
	$(VENV)/bin/stepbuild build -t hello:latest samples/hello
	$(VENV)/bin/stepbuild run hello:latest

# The team cache end to end: debootstrap bookworm, java-base with a registry cache, an app
# built from a fresh store (root; needs Debian's mirrors; ~75 s; removes build/java-demo at
# exit unless JAVA_DEMO_KEEP=1). See samples/java.
java-demo: setup
	bash scripts/java-demo.sh

# The whole suite (README's test command; .ci/run calls it).
test: setup
	$(PYTEST) -x -q

test-unit: setup
	$(PYTEST) -x -q tests/unit tests/conformance

# Property tests with new random examples (make test replays fixed ones); fails keep their example.
fuzz: setup
	STEPBUILD_HYPOTHESIS=explore $(PYTEST) -x -q $$(grep -rl "@given" tests)

lint: setup
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ruff check stepbuild tests
	$(PY) -m mypy -p stepbuild
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) bench/parse_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
