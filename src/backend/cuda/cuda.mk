# cuda.mk — the CUDA backend's build, included by the Makefile.
#
# Compiled whenever nvcc is found and US_NO_CUDA is not set: the objects join the library
# (CUDA_OBJ), -DUS_HAVE_CUDA makes us_backend_create dispatch "cuda", and the CUDA libraries join
# the link. `make gpu-test` builds build/unswag_gpu_tests (tests/gpu/*.c with the common harness)
# and runs it: it needs a GPU (see docs/GPU.md).

NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)

ifeq ($(US_NO_CUDA),)
ifneq ($(strip $(NVCC)),)

CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH  ?= -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90
NVCCFLAGS  ?= -O3 -std=c++17 $(CUDA_ARCH) -lineinfo -Xcompiler -Wall,-Wextra -Iinclude -Isrc
CUDA_SRC   := $(sort $(wildcard src/backend/cuda/*.cu))
CUDA_OBJ   += $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o)
CFLAGS     += -DUS_HAVE_CUDA
LDLIBS     += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublasLt -lcublas -lstdc++

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -MF $(@:.o=.d) -c $< -o $@

GPU_TEST_SRC := $(sort $(wildcard tests/gpu/*.c))
GPU_TEST_OBJ := $(GPU_TEST_SRC:%.c=$(BUILD)/obj/%.o)

$(BUILD)/unswag_gpu_tests: $(GPU_TEST_OBJ) $(BUILD)/obj/tests/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

.PHONY: gpu-test gpu-build gpu-bench
$(BUILD)/unswag_gpu_bench: $(BUILD)/obj/bench/gpu_bench.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# the cuBLASLt candidates alone and under load (a probe of gemm_tune's choice; cuBLASLt only)
$(BUILD)/gemm_load: bench/gemm_load.cu
	@mkdir -p $(dir $@)
	$(NVCC) -O2 -std=c++17 $(CUDA_ARCH) -Xcompiler -Wall,-Wextra -o $@ $< -lcublasLt

gpu-build: $(BUILD)/unswag $(BUILD)/unswag_gpu_tests $(BUILD)/unswag_gpu_bench $(BUILD)/gemm_load
gpu-test: gpu-build
	cd $(CURDIR) && $(BUILD)/unswag_gpu_tests $(GPU_TESTS)
gpu-bench: gpu-build
	$(BUILD)/unswag_gpu_bench

-include $(CUDA_OBJ:.o=.d) $(GPU_TEST_OBJ:.o=.d) $(BUILD)/obj/bench/gpu_bench.d

else
.PHONY: gpu-test gpu-build gpu-bench
gpu-test gpu-build gpu-bench:
	@echo "gpu-test: nvcc not found (set NVCC=/path/to/nvcc)"; exit 1
endif
else
.PHONY: gpu-test gpu-build gpu-bench
gpu-test gpu-build gpu-bench:
	@echo "gpu-test: US_NO_CUDA is set"; exit 1
endif
