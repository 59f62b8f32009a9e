# The two commands README.md gives: `make demo` and `make test`. Both set up what is missing first.
SWIFT       ?= swift
# One configuration for everything: the interpreter is ~100x slower in debug, too slow to test
# real traffic, and one set of flags means tests, demo and bench share one build.
BUILD_FLAGS  = -c release -Xswiftc -enable-testing
BIN          = .build/release/understudy

.PHONY: setup guests build build-debug test demo bench clean

setup:
	@scripts/setup.sh

guests: setup
	@$(MAKE) -s -C guests all

# Tests included: building only the product computes other build parameters and rebuilds
# WasmKit (minutes), so every target builds exactly what `make test` builds.
build: setup
	$(SWIFT) build $(BUILD_FLAGS) --build-tests

# The whole suite once per engine: every machine a test starts, in-process or as a real
# process, runs on UNDERSTUDY_ENGINE; tests that restore or replay a checkpoint do it on the other.
ENGINES ?= wasmtime wasmkit
test: build guests
	@for engine in $(ENGINES); do \
		echo "make test: the suite on $$engine"; \
		UNDERSTUDY_ENGINE=$$engine UNDERSTUDY_BIN=$(CURDIR)/$(BIN) UNDERSTUDY_GUESTS=$(CURDIR)/guests/build \
			$(SWIFT) test $(BUILD_FLAGS) --skip-build || exit 1; \
	done

demo: build guests
	scripts/demo.sh $(BIN)

bench: build guests
	scripts/bench.sh $(BIN)

clean:
	rm -rf .build guests/build
