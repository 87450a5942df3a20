/* tokens.c — the token dataset container and the pre-tokenized JSONL reader.
 *
 * The reader streams the file with getline(), so memory holds one line plus the parsed examples.
 * Each non-blank line must be a JSON object with "input_ids" (a non-empty array of exact integers
 * in [0, vocab)) and optionally "labels" (same length; [0, vocab) or -100; null = absent).
 * Every error names FILE:LINE. us_jsonl_tokens_load initialises *ds itself and leaves it empty
 * on failure, so callers never see a half-loaded dataset. */
#include "data/tokens.h"

#include "data/cache.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "io/jsonutil.h"

us_status us_token_dataset_push(us_token_dataset *ds, const int32_t *ids, const int32_t *labels, int64_t n,
                                us_err *e) {
    if (!ds || !ids || n <= 0) return us_fail(e, US_EINVAL, "token dataset: empty or missing example");
    if (ds->spill) {
        us_status st = us_cache_spill_push(ds->spill, ids, labels, n, e);
        if (!st) ds->n++;
        return st;
    }
    if ((uint64_t)n > SIZE_MAX / 2 / sizeof(int32_t))
        return us_fail(e, US_EINVAL, "token dataset: example of %lld tokens is too long", (long long)n);
    if (ds->n == ds->cap) {
        size_t cap = ds->cap ? ds->cap * 2 : 64;
        us_example *ex = realloc(ds->ex, cap * sizeof *ex);
        if (!ex) return us_fail(e, US_ENOMEM, "token dataset: out of memory growing to %zu examples", cap);
        ds->ex = ex;
        ds->cap = cap;
    }
    size_t bytes = (size_t)n * sizeof(int32_t);
    int32_t *a = us_malloc(bytes, e, "example ids");
    int32_t *b = a ? us_malloc(bytes, e, "example labels") : NULL;
    if (!a || !b) {
        free(a);
        return US_ENOMEM;
    }
    memcpy(a, ids, bytes);
    memcpy(b, labels ? labels : ids, bytes);
    ds->ex[ds->n++] = (us_example){a, b, n};
    return US_OK;
}

void us_token_dataset_free(us_token_dataset *ds) {
    if (!ds) return;
    if (!ds->map && !ds->shared)
        for (size_t i = 0; i < ds->n; i++) {
            free(ds->ex[i].ids);
            free(ds->ex[i].labels);
        }
    if (ds->map) munmap(ds->map, ds->map_len);
    free(ds->ex);
    struct us_token_spill *sp = ds->spill; /* owned by whoever set it (us_dataset_load) */
    memset(ds, 0, sizeof *ds);
    ds->spill = sp;
}

static bool blank(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
    return true;
}

/* Fills dst[0..n) from a JSON array of integers; ignore_ok admits -100. */
static us_status read_ints(const char *where, const char *key, const cJSON *arr, int vocab, bool ignore_ok,
                           int32_t *dst, us_err *e) {
    int64_t i = 0;
    for (const cJSON *v = arr->child; v; v = v->next, i++) {
        int64_t x;
        if (!us_json_int_in(v, INT32_MIN, INT32_MAX, &x)) {
            if (cJSON_IsNumber(v))
                return us_fail(e, US_EFORMAT, "%s: \"%s\"[%lld] = %g is not a valid integer token id", where, key,
                               (long long)i, v->valuedouble);
            return us_fail(e, US_EFORMAT, "%s: \"%s\"[%lld] must be an integer, got %s", where, key, (long long)i,
                           us_json_type_name(v));
        }
        if (!(x >= 0 && x < vocab) && !(ignore_ok && x == US_IGNORE_INDEX))
            return us_fail(e, US_EFORMAT, "%s: \"%s\"[%lld] = %lld is outside the vocabulary [0, %d)%s", where, key,
                           (long long)i, (long long)x, vocab, ignore_ok ? " and is not -100" : "");
        dst[i] = (int32_t)x;
    }
    return US_OK;
}

static us_status parse_line(const char *where, const char *line, size_t len, int vocab, us_token_dataset *ds,
                            us_err *e) {
    cJSON *root;
    us_status st = us_json_parse(line, len, where, &root, e);
    if (st) return st;
    int32_t *ids = NULL, *labels = NULL;
    if (!cJSON_IsObject(root)) {
        st = us_fail(e, US_EFORMAT, "%s: each line must be a JSON object, got %s", where, us_json_type_name(root));
        goto done;
    }
    const char *dup = us_json_duplicate_key(root);
    if (dup) {
        st = us_fail(e, US_EFORMAT, "%s: key \"%.200s\" appears twice in one object", where, dup);
        goto done;
    }
    const cJSON *ji = cJSON_GetObjectItemCaseSensitive(root, "input_ids");
    const cJSON *jl = cJSON_GetObjectItemCaseSensitive(root, "labels");
    if (!ji) {
        st = us_fail(e, US_EFORMAT, "%s: missing \"input_ids\"", where);
        goto done;
    }
    if (!cJSON_IsArray(ji)) {
        st = us_fail(e, US_EFORMAT, "%s: \"input_ids\" must be an array of integers, got %s", where,
                     us_json_type_name(ji));
        goto done;
    }
    int n = cJSON_GetArraySize(ji);
    if (n == 0) {
        st = us_fail(e, US_EFORMAT, "%s: \"input_ids\" is empty", where);
        goto done;
    }
    if (jl && cJSON_IsNull(jl)) jl = NULL;
    if (jl && !cJSON_IsArray(jl)) {
        st = us_fail(e, US_EFORMAT, "%s: \"labels\" must be an array of integers, got %s", where,
                     us_json_type_name(jl));
        goto done;
    }
    if (jl && cJSON_GetArraySize(jl) != n) {
        st = us_fail(e, US_EFORMAT, "%s: \"labels\" has %d entries but \"input_ids\" has %d", where,
                     cJSON_GetArraySize(jl), n);
        goto done;
    }
    ids = us_malloc((size_t)n * sizeof *ids, e, "input ids");
    if (!ids) {
        st = US_ENOMEM;
        goto done;
    }
    if ((st = read_ints(where, "input_ids", ji, vocab, false, ids, e))) goto done;
    if (jl) {
        labels = us_malloc((size_t)n * sizeof *labels, e, "labels");
        if (!labels) {
            st = US_ENOMEM;
            goto done;
        }
        if ((st = read_ints(where, "labels", jl, vocab, true, labels, e))) goto done;
    }
    st = us_token_dataset_push(ds, ids, labels, n, e);
done:
    free(ids);
    free(labels);
    cJSON_Delete(root);
    return st;
}

us_status us_jsonl_tokens_load(const char *path, int vocab, us_token_dataset *ds, us_err *e) {
    memset(ds, 0, sizeof *ds);
    if (!path) return us_fail(e, US_EINVAL, "no token file given");
    if (vocab <= 0) return us_fail(e, US_EINVAL, "%s: vocabulary size %d must be positive", path, vocab);
    FILE *f = fopen(path, "rb");
    if (!f) return us_fail(e, US_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        return us_fail(e, US_EIO, "%s: is a directory, not a JSONL file", path);
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t len;
    us_status st = US_OK;
    char where[1100];
    errno = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (blank(line, (size_t)len)) continue;
        snprintf(where, sizeof where, "%s:%zu", path, lineno);
        if ((st = parse_line(where, line, (size_t)len, vocab, ds, e))) break;
    }
    if (!st && ferror(f)) st = us_fail(e, US_EIO, "%s: read error after line %zu: %s", path, lineno, strerror(errno));
    if (!st && ds->n == 0) st = us_fail(e, US_EFORMAT, "%s: no examples (the file is empty or blank)", path);
    free(line);
    fclose(f);
    if (st) us_token_dataset_free(ds);
    return st;
}
