# The two entry points the README promises, each from a fresh Debian 12 machine:
#   make demo   install dependencies, build, run examples/quickstart.toml
#   make test   install dependencies, build, run every test through CTest
# and for CI and GPU hosts:
#   make test-torch2   the same sources against PyTorch 2.x's libtorch (CUDA 13, NCCL) from a
#                      venv the project makes (scripts/torch2-env.sh): the CUDA backend compiles
#                      for real, and the whole CPU suite runs on libtorch 2.x
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_ARGS ?=

TORCH2 ?= build-torch2

.PHONY: all deps configure build demo test test-torch2 clean

all: build

deps:
	./scripts/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/bin/vhost run examples/quickstart.toml

# Serial on purpose: the tests are quick, and some share scratch folders.
test: build
	ctest --test-dir $(BUILD) --output-on-failure

# CMAKE_LIBRARY_PATH: Debian's libtorch.so in /usr/lib must not be found before the venv's.
test-torch2: deps
	prefix=$$(./scripts/torch2-env.sh $(TORCH2)/venv | tail -n 1) && \
	cmake -S . -B $(TORCH2)/build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$$prefix" \
	      -DCMAKE_LIBRARY_PATH="$$prefix/../../lib" $(CMAKE_ARGS) && \
	cmake --build $(TORCH2)/build -j $(JOBS) && \
	ctest --test-dir $(TORCH2)/build --output-on-failure

clean:
	rm -rf $(BUILD) $(TORCH2)/build
