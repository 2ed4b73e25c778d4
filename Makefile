# The two entry points the README promises, each from a fresh Debian 12 machine:
#   make demo   install dependencies, build, run examples/quickstart.toml
#   make test   install dependencies, build, run every test through CTest
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_ARGS ?=

.PHONY: all deps configure build demo test clean

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

clean:
	rm -rf $(BUILD)
