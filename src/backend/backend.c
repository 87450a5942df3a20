/* backend.c — picks a compiled backend by name. */
#include "backend/backend.h"

#include <string.h>

const char *us_backends_compiled(void) {
#ifdef US_HAVE_CUDA
    return "cpu cuda";
#else
    return "cpu";
#endif
}

us_status us_backend_create(const char *name, int threads, us_backend **out, us_err *e) {
    *out = NULL;
    if (!name || strcmp(name, "cpu") == 0) return us_backend_cpu_create(threads, out, e);
    if (strcmp(name, "cuda") == 0) {
#ifdef US_HAVE_CUDA
        return us_backend_cuda_create(out, e);
#else
        return us_fail(e, US_EDEVICE, "--device cuda: this build has no CUDA backend (compiled: %s); "
                                      "build on a machine with nvcc", us_backends_compiled());
#endif
    }
    return us_fail(e, US_EINVAL, "--device %s: unknown device (compiled: %s)", name, us_backends_compiled());
}
