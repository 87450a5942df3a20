/* cache.c — the token cache file (see cache.h). The header is written last, so a file cut short
 * anywhere has a wrong size, magic or hash; the payload hash (64-bit words through a multiply-xor
 * mix) covers the examples and the offsets, and is checked on every open: the dataset loader
 * reads every id anyway to check it against the vocabulary, so the check costs one more pass. */
#include "data/cache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "USTOKC01"
enum { HDR = 64 };

typedef struct hdr {
    char magic[8];
    uint64_t key[2], n_ex, n_tok, n_trunc, hash, zero;
} hdr;
_Static_assert(sizeof(hdr) == HDR, "cache header is 64 bytes");

struct us_token_spill {
    FILE *f;
    char *path, *tmp;
    uint64_t key[2], n_tok, hash;
    uint64_t *off;
    size_t n, cap;
};

static uint64_t mix(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, b, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        b += 8, n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, b, n);
    h = (h ^ w ^ ((uint64_t)n << 56)) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 31);
}

static uint64_t mix_str(uint64_t h, const char *s) { return s ? mix(h, s, strlen(s) + 1) : mix(h, "\xff", 1); }

/* Hashes a file's bytes into h (absent file: a marker). */
static us_status mix_file(uint64_t *h, const char *path, bool required, us_err *e) {
    char *d;
    size_t n;
    us_err fe;
    if (us_read_file(path, &d, &n, &fe)) {
        if (required) return us_fail(e, US_EIO, "%s: %s", path, fe.msg);
        *h = mix(*h, "absent", 6);
        return US_OK;
    }
    *h = mix(*h, &n, sizeof n);
    *h = mix(*h, d, n);
    free(d);
    return US_OK;
}

us_status us_cache_key(const char *data_path, const char *tokenizer, const us_data_options *o, uint64_t key[2],
                       us_err *e) {
    struct stat sb;
    if (stat(data_path, &sb)) return us_fail(e, US_EIO, "%s: %s", data_path, strerror(errno));
    char tj[4200], tc[4200];
    struct stat tb;
    if (stat(tokenizer, &tb) == 0 && S_ISDIR(tb.st_mode)) {
        us_path_join(tj, sizeof tj, tokenizer, "tokenizer.json");
        us_path_join(tc, sizeof tc, tokenizer, "tokenizer_config.json");
    } else {
        snprintf(tj, sizeof tj, "%s", tokenizer);
        const char *slash = strrchr(tokenizer, '/');
        int dl = slash ? (int)(slash - tokenizer) : 1;
        snprintf(tc, sizeof tc, "%.*s/tokenizer_config.json", dl, slash ? tokenizer : ".");
    }
    uint64_t h[2] = {0x243F6A8885A308D3ull, 0x13198A2E03707344ull};
    for (int k = 0; k < 2; k++) {
        int64_t meta[4] = {(int64_t)sb.st_size, (int64_t)sb.st_mtim.tv_sec, (int64_t)sb.st_mtim.tv_nsec, 1 /* format */};
        int32_t opts[4] = {o->seq_len, o->refuse_long, o->train_on_prompt, o->no_eos};
        h[k] = mix(h[k], meta, sizeof meta);
        h[k] = mix(h[k], opts, sizeof opts);
        h[k] = mix_str(h[k], o->chat_template);
        us_status st = mix_file(&h[k], tj, true, e);
        if (!st) st = mix_file(&h[k], tc, false, e);
        if (!st && o->chat_template) st = mix_file(&h[k], o->chat_template, false, e);
        if (st) return st;
    }
    key[0] = h[0], key[1] = h[1];
    return US_OK;
}

bool us_cache_open(const char *cache_path, const uint64_t key[2], us_token_dataset *ds, size_t *n_truncated,
                   const char **why) {
    const char *dummy;
    if (!why) why = &dummy;
    int fd = open(cache_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return *why = "absent", false;
    struct stat sb;
    hdr h;
    if (fstat(fd, &sb) || sb.st_size < HDR || pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h ||
        memcmp(h.magic, MAGIC, 8)) {
        close(fd);
        return *why = "corrupt: bad header", false;
    }
    if (h.key[0] != key[0] || h.key[1] != key[1]) {
        close(fd);
        return *why = "stale: the data, tokenizer or options changed", false;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (h.n_ex == 0 || h.n_ex > size / 8 || h.n_tok > size / 8 ||
        size != HDR + h.n_tok * 8 + (h.n_ex + 1) * 8) {
        close(fd);
        return *why = "corrupt: its size does not match its header", false;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return *why = "corrupt: cannot be mapped", false;
    const unsigned char *base = map;
    const int32_t *tok = (const int32_t *)(base + HDR);
    const uint64_t *off = (const uint64_t *)(base + HDR + h.n_tok * 8);
    us_example *ex = NULL;
    *why = NULL;
    if (mix(0x5A17ull, base + HDR, size - HDR) != h.hash) *why = "corrupt: payload hash mismatch";
    else if (off[0] != 0 || off[h.n_ex] != h.n_tok) *why = "corrupt: bad offsets";
    else if (!(ex = malloc(h.n_ex * sizeof *ex))) *why = "out of memory";
    for (uint64_t k = 0; !*why && k < h.n_ex; k++) {
        if (off[k + 1] <= off[k] || off[k + 1] > h.n_tok) {
            *why = "corrupt: bad offsets";
            break;
        }
        int64_t n = (int64_t)(off[k + 1] - off[k]);
        ex[k] = (us_example){(int32_t *)(tok + 2 * off[k]), (int32_t *)(tok + 2 * off[k] + n), n};
    }
    if (*why) {
        free(ex);
        munmap(map, size);
        return false;
    }
    memset(ds, 0, sizeof *ds);
    ds->ex = ex;
    ds->n = ds->cap = h.n_ex;
    ds->map = map;
    ds->map_len = size;
    if (n_truncated) *n_truncated = h.n_trunc;
    return true;
}

us_status us_cache_begin(const char *cache_path, const uint64_t key[2], us_token_spill **out, us_err *e) {
    *out = NULL;
    us_token_spill *sp = calloc(1, sizeof *sp);
    size_t pl = strlen(cache_path) + 32;
    if (sp) sp->path = strdup(cache_path), sp->tmp = malloc(pl);
    if (!sp || !sp->path || !sp->tmp) {
        us_cache_abort(sp);
        return us_fail(e, US_ENOMEM, "out of memory");
    }
    snprintf(sp->tmp, pl, "%s.tmp.%ld", cache_path, (long)getpid());
    sp->f = fopen(sp->tmp, "wb");
    if (!sp->f) {
        us_status st = us_fail(e, US_EIO, "%s: cannot create: %s", sp->tmp, strerror(errno));
        us_cache_abort(sp);
        return st;
    }
    static const char zero[HDR];
    fwrite(zero, 1, HDR, sp->f);
    sp->key[0] = key[0], sp->key[1] = key[1];
    sp->hash = 0x5A17ull;
    *out = sp;
    return US_OK;
}

us_status us_cache_spill_push(us_token_spill *sp, const int32_t *ids, const int32_t *labels, int64_t n, us_err *e) {
    if (n <= 0) return us_fail(e, US_EINVAL, "token cache: empty example");
    if (sp->n + 1 >= sp->cap) {
        size_t cap = sp->cap ? sp->cap * 2 : 1024;
        uint64_t *o = realloc(sp->off, cap * sizeof *o);
        if (!o) return us_fail(e, US_ENOMEM, "token cache: out of memory for offsets");
        sp->off = o, sp->cap = cap;
    }
    if (sp->n == 0) sp->off[0] = 0;
    size_t b = (size_t)n * 4;
    if (fwrite(ids, 1, b, sp->f) != b || fwrite(labels ? labels : ids, 1, b, sp->f) != b)
        return us_fail(e, US_EIO, "%s: write failed: %s", sp->tmp, strerror(errno));
    sp->n_tok += (uint64_t)n;
    sp->off[++sp->n] = sp->n_tok;
    return US_OK;
}

void us_cache_abort(us_token_spill *sp) {
    if (!sp) return;
    if (sp->f) fclose(sp->f);
    if (sp->tmp) unlink(sp->tmp);
    free(sp->path);
    free(sp->tmp);
    free(sp->off);
    free(sp);
}

/* The payload hash is computed by reading the file back (examples were streamed out). */
static us_status hash_back(us_token_spill *sp, uint64_t *h, us_err *e) {
    int fd = open(sp->tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return us_fail(e, US_EIO, "%s: %s", sp->tmp, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || sb.st_size <= HDR) {
        close(fd);
        return us_fail(e, US_EIO, "%s: cannot stat", sp->tmp);
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return us_fail(e, US_EIO, "%s: cannot map: %s", sp->tmp, strerror(errno));
    *h = mix(0x5A17ull, (const unsigned char *)m + HDR, (size_t)sb.st_size - HDR);
    munmap(m, (size_t)sb.st_size);
    return US_OK;
}

us_status us_cache_commit(us_token_spill *sp, size_t n_truncated, us_err *e) {
    us_status st = US_OK;
    if (sp->n == 0) st = us_fail(e, US_EINVAL, "token cache: no examples");
    if (!st && fwrite(sp->off, 8, sp->n + 1, sp->f) != sp->n + 1) st = us_fail(e, US_EIO, "%s: write failed", sp->tmp);
    if (!st && fflush(sp->f)) st = us_fail(e, US_EIO, "%s: write failed: %s", sp->tmp, strerror(errno));
    hdr h = {.key = {sp->key[0], sp->key[1]}, .n_ex = sp->n, .n_tok = sp->n_tok, .n_trunc = n_truncated};
    memcpy(h.magic, MAGIC, 8);
    if (!st) st = hash_back(sp, &h.hash, e);
    if (!st && (fseek(sp->f, 0, SEEK_SET) || fwrite(&h, sizeof h, 1, sp->f) != 1 || fflush(sp->f) ||
                fsync(fileno(sp->f))))
        st = us_fail(e, US_EIO, "%s: write failed: %s", sp->tmp, strerror(errno));
    if (!st && rename(sp->tmp, sp->path)) st = us_fail(e, US_EIO, "%s: cannot rename into place: %s", sp->path, strerror(errno));
    if (st) {
        us_cache_abort(sp);
        return st;
    }
    fclose(sp->f);
    sp->f = NULL;
    free(sp->tmp);
    sp->tmp = NULL; /* renamed: nothing to unlink */
    us_cache_abort(sp);
    return US_OK;
}
