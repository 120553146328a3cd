# Fuzzing (issue: hostile input). Each fuzz/fuzz_<name>.c is one libFuzzer target:
#
#   make fuzz                      every target for FUZZ_SECONDS (default 60) each, with clang
#   make fuzz FUZZ_TARGETS=auction one target
#
# `make check` also builds every target as a plain program (fuzz/driver.c) and replays the
# committed seed corpus (fuzz/corpus/<name>) and every input that once crashed
# (fuzz/regressions/<name>), so a fixed bug stays fixed in the normal and sanitizer builds.

FUZZ_ALL      := $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_TARGETS  ?= $(FUZZ_ALL)
FUZZ_SECONDS  ?= 60
FUZZ_CC       ?= clang
FUZZ_FLAGS    := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                 -fno-omit-frame-pointer
FUZZ_CFLAGS   := -std=c11 -D_GNU_SOURCE -Icommon -I$(GEN) -Ifuzz $(PKG_CFLAGS)

# The service code each target reaches (besides common/ and the generated protocol).
fuzz_src_auction  := services/auction/market.c services/auction/auction_link.c
fuzz_src_journal  := services/broker/journal.c
fuzz_src_messages := services/billing/ingest.c
fuzz_src_text     := services/billing/http.c
fuzz_inc           = $(sort $(patsubst %/,-I%,$(dir $(fuzz_src_$(1)))))

FUZZ_BINS     := $(patsubst %,$(BUILD)/fuzz/%,$(FUZZ_ALL))
FUZZ_RUN_BINS := $(patsubst %,$(BUILD)/fuzzrun/%,$(FUZZ_ALL))
CHECK_BINS    += $(FUZZ_RUN_BINS)

.PHONY: fuzz fuzz-build

define FUZZ_RULE
# libFuzzer build: every source compiled with coverage instrumentation.
$(BUILD)/fuzz/$(1): fuzz/fuzz_$(1).c fuzz/split.c $(fuzz_src_$(1)) $(COMMON_SRC) $(PROTO_C) $(PROTO_H)
	@mkdir -p $$(dir $$@)
	$$(FUZZ_CC) $$(FUZZ_FLAGS) $$(FUZZ_CFLAGS) $(call fuzz_inc,$(1)) -o $$@ \
		fuzz/fuzz_$(1).c fuzz/split.c $(fuzz_src_$(1)) $(COMMON_SRC) $(PROTO_C) $$(LDLIBS)

# Replay build: the normal toolchain and flags (SANITIZE=1 included).
$(OBJ)/fuzz/fuzz_$(1).o: CFLAGS += $(call fuzz_inc,$(1)) -Ifuzz
$(BUILD)/fuzzrun/$(1): $(OBJ)/fuzz/fuzz_$(1).o $(OBJ)/fuzz/driver.o $(OBJ)/fuzz/split.o \
		$(patsubst %.c,$(OBJ)/%.o,$(fuzz_src_$(1))) $(LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(foreach t,$(FUZZ_ALL),$(eval $(call FUZZ_RULE,$(t))))

$(OBJ)/fuzz/driver.o $(OBJ)/fuzz/split.o: CFLAGS += -Ifuzz

fuzz-build: $(patsubst %,$(BUILD)/fuzz/%,$(FUZZ_TARGETS))

# Each target starts from its committed seeds plus what earlier runs found (build/fuzz/corpus),
# runs for FUZZ_SECONDS, and leaves any crashing input in build/fuzz/crashes/<name>/: copy it
# into fuzz/regressions/<name>/ when the bug is fixed.
fuzz: deps
	@$(MAKE) --no-print-directory fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p $(BUILD)/fuzz/corpus/$$t $(BUILD)/fuzz/crashes/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		$(BUILD)/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 \
			-rss_limit_mb=2048 -print_final_stats=1 \
			-artifact_prefix=$(BUILD)/fuzz/crashes/$$t/ \
			$(BUILD)/fuzz/corpus/$$t fuzz/corpus/$$t 2>$(BUILD)/fuzz/$$t.log \
			|| { tail -n 60 $(BUILD)/fuzz/$$t.log; echo "fuzz: $$t FAILED: see $(BUILD)/fuzz/crashes/$$t/"; exit 1; }; \
		grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' $(BUILD)/fuzz/$$t.log | sed "s/^/  $$t /"; \
	done; echo "fuzz: every target ran $(FUZZ_SECONDS) s without a crash"
