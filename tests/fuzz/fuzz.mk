# fuzz.mk — libFuzzer targets for the input readers, included by the Makefile.
#
# `make fuzz` builds build-fuzz/fuzz_{safetensors,config,jsonl,adapter,tokenizer} with clang
# (-fsanitize=fuzzer,address,undefined; UB is fatal) from the reader sources only (core, io, data,
# tok). `make fuzz-run FUZZ_TIME=30` runs each for FUZZ_TIME seconds, seeded with the hostile
# corpus (tests/hostile/) and the fixtures, new inputs kept in build-fuzz/corpus/<target>/, and
# fails on the first crash, leak, timeout or out-of-memory, leaving the input in
# build-fuzz/crashes/ (turn it into a tests/hostile/ regression file, then fix the reader).
# Debian packages: clang (libFuzzer runtime from libclang-rt-*-dev via clang's dependencies).

FUZZ_CC      ?= clang
FUZZ_BUILD   ?= build-fuzz
FUZZ_TIME    ?= 30
FUZZ_TARGETS := safetensors config jsonl adapter tokenizer
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter \
                -Iinclude -Isrc -Itests/fuzz $(shell pkg-config --cflags libcjson libpcre2-8 2>/dev/null)
FUZZ_LIBS    := $(shell pkg-config --libs libcjson libpcre2-8 2>/dev/null) -lm
FUZZ_LIB_SRC := src/core/common.c $(sort $(wildcard src/io/*.c src/data/*.c src/tok/*.c))
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=$(FUZZ_BUILD)/obj/%.o) $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_stub.o

.PHONY: fuzz fuzz-run
.SECONDARY: $(FUZZ_LIB_OBJ) $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o)
fuzz: $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(FUZZ_LIBS)

# seeds: the hostile corpus, the fixtures, and adapter directories flattened to config@@safetensors
fuzz-run: fuzz
	@set -e; S=$(FUZZ_BUILD)/seeds; rm -rf $$S; mkdir -p $$S/safetensors $$S/config $$S/jsonl $$S/adapter $$S/tokenizer $(FUZZ_BUILD)/crashes; \
	cp tests/hostile/safetensors/* tests/fixtures/*/adapter_init/adapter_model.safetensors $$S/safetensors/ 2>/dev/null || true; \
	for f in tests/fixtures/*/model/config.json; do cp $$f $$S/config/$$(basename $$(dirname $$(dirname $$f))).json; done; \
	cp tests/hostile/config/* $$S/config/; \
	cp tests/hostile/jsonl/* $$S/jsonl/; for f in tests/fixtures/*/data.jsonl; do cp $$f $$S/jsonl/$$(basename $$(dirname $$f)).jsonl; done; \
	for d in tests/hostile/adapter/* tests/fixtures/*/adapter_init; do n=$$(echo $$d | tr / _); \
	  { cat $$d/adapter_config.json; printf '\n@@\n'; cat $$d/adapter_model.safetensors 2>/dev/null || true; } > $$S/adapter/$$n; done; \
	cp tests/hostile/tokenizer/* $$S/tokenizer/; \
	for t in $(FUZZ_TARGETS); do mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	  echo "fuzz: $$t for $(FUZZ_TIME) s"; \
	  rc=0; $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_TIME) -timeout=10 -rss_limit_mb=2048 -max_len=262144 \
	    -dict=tests/fuzz/json.dict -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/crashes/$$t- \
	    $(FUZZ_BUILD)/corpus/$$t $$S/$$t > $(FUZZ_BUILD)/$$t.log 2>&1 || rc=$$?; \
	  grep -E "^stat::number_of_executed_units|^stat::new_units_added|^stat::peak_rss_mb|SUMMARY" $(FUZZ_BUILD)/$$t.log || true; \
	  if [ $$rc -ne 0 ]; then echo "fuzz: $$t failed (exit $$rc), see $(FUZZ_BUILD)/$$t.log:"; tail -40 $(FUZZ_BUILD)/$$t.log; \
	    ls $(FUZZ_BUILD)/crashes/$$t-* 2>/dev/null; exit 1; fi; \
	done
