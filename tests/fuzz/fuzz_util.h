/* fuzz_util.h — shared by the libFuzzer targets: the readers under test take paths (they mmap or
 * stream files), so each input is written to a file in a per-process directory under /dev/shm
 * (or $TMPDIR) first. Errors are the expected outcome for most inputs; what the fuzzer hunts is a
 * crash, a sanitizer report, a leak or a hang. */
#ifndef US_FUZZ_UTIL_H
#define US_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static inline const char *fuzz_dir(void) {
    static char dir[256];
    if (!dir[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        snprintf(dir, sizeof dir, "%s/unswag-fuzz-%ld", base, (long)getpid());
        mkdir(dir, 0700);
    }
    return dir;
}

/* Writes data to DIR/name; returns the path (static buffer per slot 0..3). */
static inline const char *fuzz_file(int slot, const char *name, const uint8_t *data, size_t len) {
    static char paths[4][512];
    char *p = paths[slot & 3];
    snprintf(p, 512, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(p, "wb");
    if (!f) abort();
    if (len && fwrite(data, 1, len, f) != len) abort();
    fclose(f);
    return p;
}

#endif
