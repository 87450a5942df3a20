/* config_file.c — `--config FILE.yaml` for every command: options from a YAML file.
 *
 * The file is a flat YAML mapping whose keys are the command's long options without the dashes
 * (lora-r: 16, lr: 2e-4, lora-targets: [q_proj, v_proj], no-shuffle: true). It is parsed with
 * libyaml (Debian libyaml-dev) into the argv the flags would have been: a scalar becomes
 * "--key value", a sequence "--key a,b,c", true "--key" and false nothing. Those come first and
 * the command line follows, so a flag given on the command line overrides the file (each
 * command's parser lets the last occurrence win). Anything else — nesting, anchors to mappings,
 * a key that is not a plain option name — is an error naming the file and line. */
#include "cli/config_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef struct strvec {
    char **v;
    int n, cap;
} strvec;

static bool push(strvec *s, const char *x) {
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 16;
        char **nv = realloc(s->v, (size_t)cap * sizeof *nv);
        if (!nv) return false;
        s->v = nv;
        s->cap = cap;
    }
    return (s->v[s->n] = strdup(x)) && ++s->n;
}

static bool is_true(const char *v) { return !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on") || !strcmp(v, "True"); }
static bool is_false(const char *v) { return !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off") || !strcmp(v, "False"); }

static bool good_key(const char *k) {
    if (!*k) return false;
    for (const char *p = k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_')) return false;
    return true;
}

static us_status parse_yaml(const char *path, strvec *out, us_err *e) {
    FILE *f = fopen(path, "rb");
    if (!f) return us_fail(e, US_EIO, "--config %s: cannot open", path);
    yaml_parser_t p;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&p)) {
        fclose(f);
        return us_fail(e, US_ENOMEM, "out of memory");
    }
    yaml_parser_set_input_file(&p, f);
    us_status st = US_OK;
    if (!yaml_parser_load(&p, &doc)) {
        st = us_fail(e, US_EFORMAT, "--config %s:%zu: %s", path, p.problem_mark.line + 1,
                     p.problem ? p.problem : "malformed YAML");
        yaml_parser_delete(&p);
        fclose(f);
        return st;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && root->type != YAML_MAPPING_NODE)
        st = us_fail(e, US_EFORMAT, "--config %s: expected a mapping of option: value", path);
    for (yaml_node_pair_t *pr = root && !st ? root->data.mapping.pairs.start : NULL;
         pr && pr < root->data.mapping.pairs.top && !st; pr++) {
        yaml_node_t *k = yaml_document_get_node(&doc, pr->key), *v = yaml_document_get_node(&doc, pr->value);
        if (!k || k->type != YAML_SCALAR_NODE || !good_key((char *)k->data.scalar.value)) {
            st = us_fail(e, US_EFORMAT, "--config %s:%zu: keys must be option names like lora-r", path,
                         k ? k->start_mark.line + 1 : 0);
            break;
        }
        const char *key = (const char *)k->data.scalar.value;
        if (!strcmp(key, "config")) {
            st = us_fail(e, US_EINVAL, "--config %s: a config file cannot name another", path);
            break;
        }
        char flag[300];
        snprintf(flag, sizeof flag, "--%s", key);
        for (char *c = flag + 2; *c; c++)
            if (*c == '_') *c = '-'; /* lora_r works as well as lora-r */
        if (v->type == YAML_SCALAR_NODE) {
            const char *val = (const char *)v->data.scalar.value;
            bool plain = v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            if (plain && is_true(val)) {
                if (!push(out, flag)) st = us_fail(e, US_ENOMEM, "out of memory");
            } else if (!(plain && is_false(val))) {
                if (!push(out, flag) || !push(out, val)) st = us_fail(e, US_ENOMEM, "out of memory");
            }
        } else if (v->type == YAML_SEQUENCE_NODE) {
            char list[4096] = "";
            for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
                yaml_node_t *x = yaml_document_get_node(&doc, *it);
                if (!x || x->type != YAML_SCALAR_NODE) {
                    st = us_fail(e, US_EFORMAT, "--config %s:%zu: %s: list items must be plain values", path,
                                 v->start_mark.line + 1, key);
                    break;
                }
                if (strlen(list) + strlen((char *)x->data.scalar.value) + 2 >= sizeof list) {
                    st = us_fail(e, US_EINVAL, "--config %s: %s: list too long", path, key);
                    break;
                }
                if (list[0]) strcat(list, ",");
                strcat(list, (char *)x->data.scalar.value);
            }
            if (!st && (!push(out, flag) || !push(out, list))) st = us_fail(e, US_ENOMEM, "out of memory");
        } else {
            st = us_fail(e, US_EFORMAT, "--config %s:%zu: %s: nested mappings are not options", path,
                         k->start_mark.line + 1, key);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    fclose(f);
    return st;
}

us_status us_config_expand(int argc, char **argv, int *out_argc, char ***out_argv, us_err *e) {
    strvec cfg = {0}, rest = {0};
    us_status st = US_OK;
    int n_config = 0;
    for (int i = 0; i < argc && !st; i++) {
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) st = us_fail(e, US_EINVAL, "--config needs a file");
            else if (n_config++) st = us_fail(e, US_EINVAL, "--config given twice");
            else st = parse_yaml(argv[++i], &cfg, e);
        } else if (!push(&rest, argv[i])) {
            st = us_fail(e, US_ENOMEM, "out of memory");
        }
    }
    for (int i = 0; i < rest.n && !st; i++)
        if (!push(&cfg, rest.v[i])) st = us_fail(e, US_ENOMEM, "out of memory");
    us_config_argv_free(rest.n, rest.v);
    if (st) {
        us_config_argv_free(cfg.n, cfg.v);
        return st;
    }
    if (!push(&cfg, "") || !(cfg.n--, 1)) { /* room for a NULL terminator */
        us_config_argv_free(cfg.n, cfg.v);
        return us_fail(e, US_ENOMEM, "out of memory");
    }
    free(cfg.v[cfg.n]);
    cfg.v[cfg.n] = NULL;
    *out_argc = cfg.n;
    *out_argv = cfg.v;
    return US_OK;
}

void us_config_argv_free(int argc, char **argv) {
    if (!argv) return;
    for (int i = 0; i < argc; i++) free(argv[i]);
    free(argv);
}
