/* load.c — picks the reader for a run's data file. The first non-blank line decides: an object
 * with "input_ids" means pre-tokenized JSONL (checked against the model's vocabulary); anything
 * else needs a tokenizer, and the ids it produces are checked against the model too. Text data
 * goes through DATA.unswag-cache (data/cache.h): a valid cache is mapped without loading the
 * tokenizer; otherwise the examples stream into a new cache while they are tokenized, and that
 * is mapped. A directory where no cache can be written falls back to tokenizing in memory. */
#include "data/load.h"

#include "data/cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* 1: pre-tokenized JSONL, 0: anything else, -1: no non-blank line at all */
static int first_line_pretokenized(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int yes = -1;
    while ((n = getline(&line, &cap, f)) > 0) {
        size_t i = 0;
        while (i < (size_t)n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r' || line[i] == '\n')) i++;
        if (i == (size_t)n) continue;
        yes = line[i] == '{' && strstr(line, "\"input_ids\"") != NULL;
        break;
    }
    free(line);
    fclose(f);
    return yes;
}

us_status us_data_load(us_data_source *src, us_token_dataset *ds, us_err *e) {
    struct stat sb;
    if (stat(src->path, &sb) != 0) return us_fail(e, US_EIO, "%s: no such data file", src->path);
    if (S_ISDIR(sb.st_mode)) return us_fail(e, US_EIO, "%s: is a directory, not a data file", src->path);
    int kind = first_line_pretokenized(src->path);
    if (kind < 0) return us_fail(e, US_EFORMAT, "%s: no examples (the file is empty or blank)", src->path);
    if (kind > 0) return us_jsonl_tokens_load(src->path, src->vocab, ds, e);
    const char *tp = src->tokenizer ? src->tokenizer : src->model_dir;
    char probe[4096];
    if (!src->tokenizer && (!us_path_join(probe, sizeof probe, tp, "tokenizer.json") || stat(probe, &sb) != 0))
        return us_fail(e, US_EINVAL,
                       "%s: text data needs a tokenizer, and %s has no tokenizer.json (pass --tokenizer PATH, or "
                       "pre-tokenized {\"input_ids\": [...]} lines)", src->path, src->model_dir);
    char cpath[4200] = "";
    uint64_t key[2];
    us_token_spill *sp = NULL;
    us_status st = US_OK;
    src->cache = 0;
    if (!src->no_cache && snprintf(cpath, sizeof cpath, "%s.unswag-cache", src->path) < (int)sizeof cpath &&
        !us_cache_key(src->path, tp, &src->opt, key, e)) {
        const char *why;
        if (us_cache_open(cpath, key, ds, &src->opt.n_truncated, &why)) {
            src->cache = 2;
            if (!src->quiet) fprintf(stderr, "unswag: %s: reusing the token cache %s (%zu examples)\n", src->path, cpath, ds->n);
        } else {
            if (!src->quiet && strcmp(why, "absent"))
                fprintf(stderr, "unswag: %s: token cache %s is %s; rebuilding it\n", src->path, cpath, why);
            us_err ce;
            if (us_cache_begin(cpath, key, &sp, &ce) && !src->quiet)
                fprintf(stderr, "unswag: %s: no token cache (%s); tokenizing in memory\n", src->path, ce.msg);
        }
    }
    if (src->cache != 2) {
        us_tokenizer *tok;
        st = us_tokenizer_load(tp, &tok, e);
        if (st) {
            us_cache_abort(sp);
            return st;
        }
        src->opt.spill = sp;
        st = us_dataset_load(src->path, tok, &src->opt, ds, e);
        src->opt.spill = NULL;
        us_tokenizer_free(tok);
        if (st || (sp && ds->ex)) { /* failed, or read in memory after all (pre-tokenized rows) */
            us_cache_abort(sp);
            sp = NULL;
        }
        if (st) return st;
        if (sp) {
            size_t n = ds->n;
            memset(ds, 0, sizeof *ds);
            if ((st = us_cache_commit(sp, src->opt.n_truncated, e))) return st;
            const char *why;
            if (!us_cache_open(cpath, key, ds, NULL, &why))
                return us_fail(e, US_EIO, "%s: the token cache just written does not read back (%s)", cpath, why);
            if (ds->n != n) {
                us_token_dataset_free(ds);
                return us_fail(e, US_EIO, "%s: the token cache holds %zu examples, not %zu", cpath, ds->n, n);
            }
            src->cache = 1;
            if (!src->quiet) fprintf(stderr, "unswag: %s: wrote the token cache %s (%zu examples)\n", src->path, cpath, n);
        }
    }
    for (size_t i = 0; i < ds->n; i++)
        for (int64_t j = 0; j < ds->ex[i].n; j++)
            if (ds->ex[i].ids[j] < 0 || ds->ex[i].ids[j] >= src->vocab) {
                int32_t bad = ds->ex[i].ids[j];
                us_token_dataset_free(ds);
                return us_fail(e, US_EFORMAT, "%s: example %zu: the tokenizer produced id %d, outside the model's vocabulary of %d",
                               src->path, i + 1, bad, src->vocab);
            }
    if (src->opt.n_truncated && !src->quiet)
        fprintf(stderr, "unswag: %s: %zu examples truncated to --seq-len %d\n", src->path, src->opt.n_truncated,
                src->opt.seq_len);
    return US_OK;
}
