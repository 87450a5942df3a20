# UnSwag build. `make` builds build/libunswag.a, the CLI build/unswag and the test runner;
# `make test` runs the suite; `make asan` runs it under AddressSanitizer + UBSan.
# The CUDA backend is compiled whenever nvcc is found (src/backend/cuda/cuda.mk).

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2 -march=x86-64-v2 -g
SAN     ?=
# OpenBLAS built for OpenMP (Debian's libopenblas-openmp-dev) shares our OpenMP threads: a BLAS
# call inside a parallel region runs single-threaded instead of oversubscribing the cores.
BLAS_PC := /usr/lib/$(shell gcc -print-multiarch 2>/dev/null)/openblas-openmp/pkgconfig
BLAS_LIBDIR := $(shell PKG_CONFIG_PATH=$(BLAS_PC) pkg-config --variable=libdir openblas 2>/dev/null)
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter $(OPT) $(SAN) -fopenmp \
           -Iinclude -Isrc $(shell PKG_CONFIG_PATH=$(BLAS_PC) pkg-config --cflags openblas libcjson libpcre2-8 2>/dev/null)
LDLIBS  += $(shell PKG_CONFIG_PATH=$(BLAS_PC) pkg-config --libs openblas libcjson libpcre2-8 2>/dev/null) \
           -Wl,-rpath,$(BLAS_LIBDIR) -lm -lpthread
LDFLAGS += -fopenmp $(SAN)

LIB_SRC  := $(sort $(shell find src -name '*.c' -not -path 'src/cli/*'))
CLI_SRC  := $(sort $(wildcard src/cli/*.c))
TEST_SRC := $(sort $(wildcard tests/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/obj/%.o)
LIB      := $(BUILD)/libunswag.a
CUDA_OBJ :=

.DEFAULT_GOAL := all
-include src/backend/cuda/cuda.mk

.PHONY: all test asan clean bench demo
all: $(BUILD)/unswag $(BUILD)/unswag_tests

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ) $(CUDA_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/unswag: $(CLI_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(LIB) $(LDLIBS)

$(BUILD)/unswag_tests: $(TEST_OBJ) $(filter-out $(BUILD)/obj/src/cli/main.o,$(CLI_OBJ)) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/sgemm_peak: bench/sgemm_peak.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

bench: all $(BUILD)/sgemm_peak
	bench/cpu_train_bench.sh

# `make test` and `make demo` work on a fresh machine: they install what is missing first, then
# build in a sub-make (which reads the pkg-config flags of the libraries just installed).
test:
	bash scripts/deps.sh
	$(MAKE) all
	cd $(CURDIR) && OMP_NUM_THREADS=2 $(BUILD)/unswag_tests

asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" US_NO_CUDA=1 all
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 OMP_NUM_THREADS=2 \
	    build-asan/unswag_tests $(ASAN_TESTS)

clean:
	rm -rf build build-asan

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)
-include demo.mk
-include tests/fuzz/fuzz.mk
