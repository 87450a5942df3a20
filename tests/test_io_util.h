/* test_io_util.h — helpers shared by the I/O tests: hand-built safetensors files, small file
 * utilities and an f16 decoder written independently of src/core (to cross-check it). */
#ifndef US_TEST_IO_UTIL_H
#define US_TEST_IO_UTIL_H

#include <cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "test.h"

/* Writes an 8-byte header length (hlen, may lie), the header text, then data_len bytes of data
 * (the byte i is i & 0xff). Returns 0 on success. */
static inline int tio_write_st_raw(const char *path, uint64_t hlen, const char *header, size_t data_len) {
    size_t hl = strlen(header);
    size_t total = 8 + hl + data_len;
    unsigned char *buf = malloc(total ? total : 1);
    if (!buf) return -1;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) buf[8 + hl + i] = (unsigned char)i;
    int r = us_test_write(path, buf, total);
    free(buf);
    return r;
}

/* Same with the true header length. */
static inline int tio_write_st(const char *path, const char *header, size_t data_len) {
    return tio_write_st_raw(path, strlen(header), header, data_len);
}

static inline int tio_has(const char *msg, const char *needle) { return strstr(msg, needle) != NULL; }

static inline int tio_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Number of entries in dir whose name contains ".tmp."; -1 when dir cannot be read. */
static inline int tio_count_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

/* Reads a whole file into a malloc'ed buffer (NUL-terminated); NULL on failure. */
static inline char *tio_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = 0;
        if (len) *len = (size_t)n;
    }
    return b;
}

/* IEEE half to double, straight from the definition. */
static inline double tio_f16(uint16_t h) {
    int s = h >> 15, ex = (h >> 10) & 31, m = h & 1023;
    double v;
    if (ex == 0)
        v = ldexp((double)m, -24);
    else if (ex == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp(1024.0 + m, ex - 25);
    return s ? -v : v;
}

/* bfloat16 is the top half of an f32. */
static inline double tio_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Finds a tensor's bytes in a whole-file buffer by our own reading of the header (cJSON only,
 * none of src/io); fills dtype (8 chars) and nbytes. NULL when absent. */
static inline const unsigned char *tio_raw_tensor(const char *bytes, const char *name, char *dtype, size_t *nbytes) {
    uint64_t hl = 0;
    *nbytes = 0;
    dtype[0] = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)bytes[i];
    cJSON *h = cJSON_ParseWithLength(bytes + 8, (size_t)hl);
    if (!h) return NULL;
    cJSON *tj = cJSON_GetObjectItem(h, name);
    cJSON *off = cJSON_GetObjectItem(tj, "data_offsets");
    const unsigned char *p = NULL;
    if (off) {
        size_t b = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble, en = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        p = (const unsigned char *)bytes + 8 + hl + b;
        *nbytes = en - b;
        snprintf(dtype, 8, "%s", cJSON_GetObjectItem(tj, "dtype")->valuestring);
    }
    cJSON_Delete(h);
    return p;
}

#endif
