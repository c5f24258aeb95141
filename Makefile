# ppsync — build, test and measure. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= dev
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
LDFLAGS := -s -w -X main.version=$(VERSION)
# Native fuzz targets run briefly by `make check` (package:target).
FUZZ_TARGETS := ./internal/wire:FuzzDecodeEnvelope ./internal/wire:FuzzUnmarshalOps ./internal/wire:FuzzReadBody \
	./internal/wire:FuzzVerifyRun \
	./family:FuzzParseCertificate ./family:FuzzParseJoinRequest ./family:FuzzParseRevocation ./family:FuzzParseInfo \
	./family:FuzzParseInstallable ./state:FuzzDecodeRecord ./state:FuzzDecodeDeps ./state:FuzzMsgpackValue \
	./mesh:FuzzDecompressFrame
# A count, not a duration: with a duration Go's fuzz coordinator can fail a
# target with "context deadline exceeded" when a busy worker misses its
# deadline (seen in CI); a count has no deadline to race.
FUZZTIME ?= 20000x
BENCHTIME ?= 1x

.PHONY: help build check fmt vet staticcheck test fuzz cross tidy bench demo clean soak

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/ppsync (VERSION=1.2.3 stamps the version)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ppsync ./cmd/ppsync

check: fmt vet staticcheck tidy test fuzz cross ## the one gate: format, vet, staticcheck, tidy, tests with -race, fuzz, cross builds
	@echo "make check: all passed"

fmt: ## fail if any file is not gofmt-ed
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "not gofmt-ed:"; echo "$$out"; exit 1; fi

vet: ## go vet
	$(GO) vet ./...

staticcheck: ## staticcheck (fetched through the module proxy)
	$(GO) run $(STATICCHECK) ./...

tidy: ## fail if go.mod/go.sum are not tidy
	$(GO) mod tidy -diff

test: ## all tests with the race detector
	$(GO) test -race -count=1 -timeout 12m ./...

fuzz: ## run every native fuzz target briefly (FUZZTIME=20000x executions each, or a duration like 30s)
	@set -e; for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg >/tmp/ppsync-fuzz.log 2>&1 || { cat /tmp/ppsync-fuzz.log; exit 1; }; \
	done

cross: ## pure-Go builds for linux/amd64, windows/amd64, darwin/arm64
	@set -e; for p in linux/amd64 windows/amd64 darwin/arm64; do \
		echo "build $$p"; CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -o /dev/null ./...; done

bench: ## benchmarks with figures (BENCHTIME=1x; try BENCHTIME=3x), built without cgo like the binary
	CGO_ENABLED=0 $(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 60m ./integration/ ./state/ ./internal/wire/ ./internal/store/ ./db/... ./node/

demo: build ## the main job: a demo family syncing on this machine
	./bin/ppsync demo

clean: ## remove build output
	rm -rf bin

soak: ## long randomized fault schedules on real nodes (SOAK=30m); writes soak-report.json
	PPSYNC_SOAK=$(or $(SOAK),30m) PPSYNC_SOAK_REPORT=$(CURDIR)/soak-report.json \
		$(GO) test -run '^TestSoak$$' -count=1 -timeout 0 -v ./integration/fault/
