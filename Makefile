# ringkv build.  `make` builds ringkv-server and ringkv-bench; `make test` runs the unit and
# end-to-end tests under ASan+UBSan; `make SANITIZE=thread test` builds with ThreadSanitizer;
# `make run` starts a server on 127.0.0.1:6379; `make bench` runs the benchmark suite.

CC       ?= cc
OPT      ?= -O2
CFLAGS   ?= $(OPT) -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -D_GNU_SOURCE -I.
LDLIBS   := -luring -lnuma -lxxhash -lpthread -lm
SANITIZE ?=

ifeq ($(SANITIZE),thread)
  SANFLAGS := -fsanitize=thread -Wno-tsan
  BUILD    := build/tsan
else ifeq ($(SANITIZE),address)
  SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  BUILD    := build/asan
else
  SANFLAGS :=
  BUILD    := build/rel
endif
CFLAGS  += $(SANFLAGS)
LDFLAGS += $(SANFLAGS)

LIB_SRC    := $(wildcard core/*.c) $(filter-out net/main.c,$(wildcard net/*.c)) $(wildcard shm/*.c)
LIB_OBJ    := $(LIB_SRC:%.c=$(BUILD)/%.o)
BENCH_SRC  := $(wildcard bench/*.c)
BENCH_OBJ  := $(BENCH_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC   := $(wildcard tests/core/*.c tests/net/*.c tests/shm/*.c)
UNIT_BIN   := $(UNIT_SRC:%.c=$(BUILD)/%)
# Plain programs for ThreadSanitizer (Criterion cannot start under TSan).
TSAN_SRC   := $(wildcard tests/tsan/*.c)
TSAN_BIN   := $(TSAN_SRC:%.c=$(BUILD)/%)

SERVER := $(BUILD)/ringkv-server
BENCHB := $(BUILD)/ringkv-bench

# Packages a fresh Debian 12 needs: build libraries, and the peers the tests talk to.
DEB_BUILD := build-essential liburing-dev libnuma-dev libcriterion-dev libxxhash-dev pkg-config
DEB_TEST  := redis-tools redis-server python3-redis iproute2
DEB_BENCH := gnuplot-nox

.PHONY: all deps deps-test deps-bench run test unit e2e tsan bench clean format

all: deps ringkv-server ringkv-bench

ringkv-server: $(SERVER)
	@if [ "$(BUILD)" = build/rel ]; then cp $(SERVER) $@.tmp && mv -f $@.tmp $@; fi
ringkv-bench: $(BENCHB)
	@if [ "$(BUILD)" = build/rel ]; then cp $(BENCHB) $@.tmp && mv -f $@.tmp $@; fi

$(SERVER): $(LIB_OBJ) $(BUILD)/net/main.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BENCHB): $(BENCH_OBJ) $(filter-out $(BUILD)/net/%,$(LIB_OBJ)) $(BUILD)/net/proto.o $(BUILD)/net/reply.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/tsan/%: tests/tsan/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LIB_OBJ) $(LDFLAGS) $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -o $@ $< $(LIB_OBJ) $(LDFLAGS) $(LDLIBS) -lcriterion

-include $(LIB_OBJ:.o=.d) $(BENCH_OBJ:.o=.d) $(BUILD)/net/main.d $(UNIT_BIN:=.d)

# Install what is missing: as root with apt-get, otherwise print the exact command and stop.
define need_pkgs
	@missing=""; for p in $(1); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        echo "installing:$$missing"; \
	        (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	    else \
	        echo "missing packages; run:  sudo apt-get install -y$$missing"; exit 1; \
	    fi; \
	fi
endef

deps:
	$(call need_pkgs,$(DEB_BUILD))
deps-test: deps
	$(call need_pkgs,$(DEB_TEST))
deps-bench: deps-test
	$(call need_pkgs,$(DEB_BENCH))

run: all
	./ringkv-server $(ARGS)

# Tests: unit tests and end-to-end tests, built with ASan and UBSan; then the ThreadSanitizer
# pass: the cross-worker ring under two threads, and the cross-worker end-to-end tests
# against a TSan build of the server.  `make SANITIZE=thread test` runs only the TSan pass.
ifeq ($(SANITIZE),thread)
test: deps-test tsan
else
test: deps-test
	$(MAKE) --no-print-directory SANITIZE=address unit e2e
	$(MAKE) --no-print-directory SANITIZE=thread tsan
endif

tsan: $(TSAN_BIN) $(SERVER) $(BENCHB)
	@fail=0; for t in $(TSAN_BIN); do \
	    echo "== $$t"; TSAN_OPTIONS=halt_on_error=1 timeout 300 $$t || fail=1; \
	done; exit $$fail
	RINGKV_SERVER=$(abspath $(SERVER)) RINGKV_BENCH=$(abspath $(BENCHB)) \
	    timeout 900 /usr/bin/python3 tests/e2e/run.py test_ordering test_pipeline test_conn_lifecycle test_cascade \
	        FailoverTests TcpGarbage TcpReplication.test_04 TcpReplication.test_05 \
	        TcpReplication.test_06 TcpReplication.test_07 TcpReplication.test_08 TcpReplication.test_09

unit: $(UNIT_BIN)
	@fail=0; for t in $(UNIT_BIN); do \
	    echo "== $$t"; ASAN_OPTIONS=detect_leaks=1 timeout 300 $$t --jobs 1 || fail=1; \
	done; exit $$fail

e2e: $(SERVER) $(BENCHB)
	RINGKV_SERVER=$(abspath $(SERVER)) RINGKV_BENCH=$(abspath $(BENCHB)) \
	    timeout 900 /usr/bin/python3 tests/e2e/run.py

bench: deps-bench all
	bench/suite.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build ringkv-server ringkv-bench
