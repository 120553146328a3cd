# ringbid: one non-recursive Makefile (DESIGN §9.10).
#
#   make            build every program into bin/
#   make check      install what is missing, build, run every test
#   make demo       install what is missing, build, run the marketplace with simulated load
#   make bench      benchmarks (figures printed, never asserted)
#   make SANITIZE=1 check   the same tests against an address+undefined sanitizer build

CC      ?= cc
BUILD   := build
BIN     := bin
GEN     := $(BUILD)/gen
OBJ     := $(BUILD)/obj

PKGS    := libuv libprotobuf-c libpq libsodium jansson
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lnng -lmbedx509 -lmbedtls -lmbedcrypto \
              -lpthread -lm

WARN    := -Wall -Wextra -Werror -Wmissing-prototypes -Wshadow -Wno-unused-parameter \
           -Wformat=2 -Wvla
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE $(WARN) -MMD -MP -Icommon -I$(GEN) $(PKG_CFLAGS)
LDLIBS  := $(PKG_LIBS)

ifneq ($(SANITIZE),)
ifeq ($(SANITIZE),1)
override SANITIZE := address,undefined
endif
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
endif

# Rebuild everything when the flags change (a sanitizer build after a normal one).
FLAGS_STAMP := $(BUILD)/flags.$(shell echo '$(CC) $(CFLAGS) $(LDFLAGS)' | md5sum | cut -c1-12)
# Made while the makefile is read, not by a rule: `.SECONDARY:` below would let make skip a
# missing stamp whose rule has no prerequisites, and with it the rebuild.
ifeq ($(wildcard $(FLAGS_STAMP)),)
$(shell mkdir -p $(BUILD) && rm -f $(BUILD)/flags.* && touch $(FLAGS_STAMP))
endif

PROTOS      := $(wildcard proto/*.proto)
PROTO_C     := $(patsubst proto/%.proto,$(GEN)/%.pb-c.c,$(PROTOS))
PROTO_H     := $(PROTO_C:.c=.h)

COMMON_SRC  := $(filter-out %_test.c,$(wildcard common/*.c))
LIB_OBJ     := $(patsubst %.c,$(OBJ)/%.o,$(COMMON_SRC)) $(patsubst $(GEN)/%.c,$(OBJ)/gen/%.o,$(PROTO_C))
LIB         := $(BUILD)/libringbid.a

# Programs: folder under services/ -> binary in bin/.
PROGRAMS    := broker:ringbid-broker auction:ringbid-auction presence:ringbid-presence \
               billing:ringbid-billing agent:ringbid-agent cli:ringbid \
               $(if $(wildcard services/sim/main.c),sim:ringbid-sim)
prog_dir     = $(word 1,$(subst :, ,$(1)))
prog_bin     = $(word 2,$(subst :, ,$(1)))
svc_src      = $(filter-out %_test.c,$(wildcard services/$(1)/*.c))
svc_obj      = $(patsubst %.c,$(OBJ)/%.o,$(call svc_src,$(1)))
svc_lib_obj  = $(filter-out %/main.o,$(call svc_obj,$(1)))

BINS        := $(foreach p,$(PROGRAMS),$(BIN)/$(call prog_bin,$(p)))

# Unit tests live beside the code they test: common/x_test.c, services/s/x_test.c.
UNIT_SRC    := $(wildcard common/*_test.c services/*/*_test.c)
UNIT_BINS   := $(patsubst %.c,$(BUILD)/test/%,$(UNIT_SRC))

# Test tools (raw socket probes and the like) built for the integration tests.
TOOL_SRC    := $(wildcard tests/tools/*.c)
TOOL_BINS   := $(patsubst tests/tools/%.c,$(BUILD)/tools/%,$(TOOL_SRC))

BENCH_SRC   := $(wildcard bench/*.c)
BENCH_BINS  := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all deps check demo bench unit integration clean format format-check
CHECK_BINS  :=
.SECONDARY:

all: $(BINS) $(TOOL_BINS)

deps:
	@./scripts/install-deps.sh

$(FLAGS_STAMP):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/flags.*
	@touch $@

$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: proto/%.proto
	@mkdir -p $(GEN)
	protoc-c --proto_path=proto --c_out=$(GEN) $<

$(OBJ)/gen/%.o: $(GEN)/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -Werror -Wmissing-prototypes,$(CFLAGS)) -c -o $@ $<

$(OBJ)/%.o: %.c $(PROTO_H) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(LIB_OBJ)
	@rm -f $@
	$(AR) rcs $@ $^

define PROGRAM_RULE
$(BIN)/$(call prog_bin,$(1)): $(call svc_obj,$(call prog_dir,$(1))) $(LIB)
	@mkdir -p $(BIN)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(foreach p,$(PROGRAMS),$(eval $(call PROGRAM_RULE,$(p))))

# A unit test links its own object, the non-main objects of its folder and the library.
$(BUILD)/test/common/%: $(OBJ)/common/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

define UNIT_RULE
$(BUILD)/test/services/$(1)/%: $(OBJ)/services/$(1)/%.o $(call svc_lib_obj,$(1)) $(LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS) -lcmocka
endef
$(foreach p,$(PROGRAMS),$(eval $(call UNIT_RULE,$(call prog_dir,$(p)))))

$(BUILD)/tools/%: $(OBJ)/tests/tools/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bench/%: $(OBJ)/bench/%.o $(call svc_lib_obj,auction) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

unit: all $(UNIT_BINS)

check: deps
	@$(MAKE) --no-print-directory all $(UNIT_BINS) $(CHECK_BINS)
	@./tests/run.sh $(UNIT_BINS) $(CHECK_BINS)

demo: deps
	@$(MAKE) --no-print-directory all
	@./scripts/demo.sh

bench: deps
	@$(MAKE) --no-print-directory all $(BENCH_BINS)
	@./bench/run.sh

format:
	clang-format -i $(wildcard common/*.[ch] services/*/*.[ch] tests/tools/*.c bench/*.c fuzz/*.[ch])

format-check:
	clang-format --dry-run --Werror $(wildcard common/*.[ch] services/*/*.[ch] tests/tools/*.c bench/*.c fuzz/*.[ch])

clean:
	rm -rf $(BUILD) $(BIN)

# Rule fragments of optional parts (fuzzing, browser tests, ...), one file each.
-include $(wildcard mk/*.mk)

-include $(shell find $(OBJ) -name '*.d' 2>/dev/null)
