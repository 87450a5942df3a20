/* report.c — the HTML run report: collected in memory, rendered in one pass.
 *
 * Charts are drawn here as SVG polylines in a fixed 640x260 viewBox (the page scales them), with
 * "nice" tick values (1, 2, 5 x 10^k), a log y-axis when a positive series spans more than two
 * decades, one colour per series and a legend. Long series are thinned to at most 2000 points per
 * polyline (every point still counts toward the axis range). Text is HTML-escaped. The page is
 * built in a growable buffer and written with us_write_file_atomic. Each SVG carries a data-*
 * description (class "chart", one "series" polyline per curve with data-name and data-points) so
 * a test can check the DOM without parsing geometry. */
#include "train/report.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io/safetensors.h"
#include "model/model.h"
#include "train/trainer.h"

typedef struct series {
    char name[96];
    double *x, *y;
    int n;
} series;

typedef struct chart {
    char title[128];
    series s[8];
    int ns;
} chart;

typedef struct kv {
    char section[64], key[96], val[512];
} kv;

typedef struct note {
    char heading[128];
    char *text;
} note;

typedef struct plan_rec {
    char label[96], backend[16];
    double per_kind[US_SAVE_KINDS], total, store_all;
    size_t act_bytes;
    double arena_mib;
    int max_tokens;
} plan_rec;

struct us_report {
    char title[256];
    chart charts[12];
    int nc;
    kv *kvs;
    int nkv, kvcap;
    note notes[16];
    int nn;
    plan_rec plans[4];
    int np;
};

us_report *us_report_new(const char *title) {
    us_report *r = calloc(1, sizeof *r);
    if (r) snprintf(r->title, sizeof r->title, "%s", title ? title : "unswag run");
    return r;
}

void us_report_free(us_report *r) {
    if (!r) return;
    for (int c = 0; c < r->nc; c++)
        for (int i = 0; i < r->charts[c].ns; i++) {
            free(r->charts[c].s[i].x);
            free(r->charts[c].s[i].y);
        }
    for (int i = 0; i < r->nn; i++) free(r->notes[i].text);
    free(r->kvs);
    free(r);
}

void us_report_param(us_report *r, const char *section, const char *key, const char *fmt, ...) {
    if (!r) return;
    if (r->nkv == r->kvcap) {
        int cap = r->kvcap ? r->kvcap * 2 : 32;
        kv *n = realloc(r->kvs, (size_t)cap * sizeof *n);
        if (!n) return;
        r->kvs = n;
        r->kvcap = cap;
    }
    kv *p = &r->kvs[r->nkv++];
    snprintf(p->section, sizeof p->section, "%s", section ? section : "");
    snprintf(p->key, sizeof p->key, "%s", key);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->val, sizeof p->val, fmt, ap);
    va_end(ap);
}

void us_report_note(us_report *r, const char *heading, const char *text) {
    if (!r || r->nn == (int)(sizeof r->notes / sizeof r->notes[0])) return;
    note *n = &r->notes[r->nn];
    snprintf(n->heading, sizeof n->heading, "%s", heading);
    n->text = strdup(text ? text : "");
    if (n->text) r->nn++;
}

us_status us_report_series(us_report *r, const char *chart_title, const char *name, const double *x, const double *y,
                           int n) {
    if (!r || n < 0) return US_EINVAL;
    chart *c = NULL;
    for (int i = 0; i < r->nc; i++)
        if (!strcmp(r->charts[i].title, chart_title)) c = &r->charts[i];
    if (!c) {
        if (r->nc == (int)(sizeof r->charts / sizeof r->charts[0])) return US_EINVAL;
        c = &r->charts[r->nc++];
        memset(c, 0, sizeof *c);
        snprintf(c->title, sizeof c->title, "%s", chart_title);
    }
    if (c->ns == (int)(sizeof c->s / sizeof c->s[0])) return US_EINVAL;
    series *s = &c->s[c->ns];
    s->x = malloc((size_t)(n ? n : 1) * sizeof(double));
    s->y = malloc((size_t)(n ? n : 1) * sizeof(double));
    if (!s->x || !s->y) {
        free(s->x);
        free(s->y);
        return US_ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        s->x[i] = x ? x[i] : i + 1;
        s->y[i] = y[i];
    }
    s->n = n;
    snprintf(s->name, sizeof s->name, "%s", name);
    c->ns++;
    return US_OK;
}

void us_report_plan(us_report *r, const char *label, const us_model *m) {
    if (!r || !m || r->np == (int)(sizeof r->plans / sizeof r->plans[0])) return;
    plan_rec *p = &r->plans[r->np++];
    snprintf(p->label, sizeof p->label, "%s", label);
    snprintf(p->backend, sizeof p->backend, "%s", m->be->name);
    memcpy(p->per_kind, m->plan.bytes_per_token, sizeof p->per_kind);
    p->total = m->plan.total_per_token;
    p->store_all = m->plan.store_all_per_token;
    p->act_bytes = m->be->act_bytes;
    p->arena_mib = m->arena_bytes / 1048576.0;
    p->max_tokens = m->max_tokens;
}

void us_report_add_run(us_report *r, const char *run, const struct us_train_opts *o, const us_model *m,
                       const double *x, const double *loss, const double *lr, const double *tps, int n,
                       const double *eval_x, const double *eval_y, int n_eval) {
    if (!r) return;
    char title[160];
    snprintf(title, sizeof title, "loss — %s", run);
    us_report_series(r, title, "train loss", x, loss, n);
    if (n_eval > 0) us_report_series(r, title, "eval loss", eval_x, eval_y, n_eval);
    us_report_series(r, "learning rate", run, x, lr, n);
    us_report_series(r, "tokens / s", run, x, tps, n);
    const us_config *c = &m->cfg;
    static const char *sched[] = {"constant", "linear", "cosine"};
    us_report_param(r, run, "model", "%s (%s; %d layers, hidden %d, heads %d/%d, vocab %d)", o->model_dir, c->arch,
                    c->layers, c->hidden, c->heads, c->kv_heads, c->vocab);
    us_report_param(r, run, "data", "%s", o->data_path);
    if (o->eval_data_path) us_report_param(r, run, "eval data", "%s (every %d steps)", o->eval_data_path, o->eval_every);
    if (o->val_split > 0)
        us_report_param(r, run, "eval data", "%.3g of --data held out by seed (every %d steps)", o->val_split, o->eval_every);
    if (o->packing) us_report_param(r, run, "rows", "packed examples (attention restarts per example)");
    us_report_param(r, run, "output", "%s", o->out_dir);
    if (o->full) {
        us_report_param(r, run, "method", "full fine-tuning%s", o->random_init ? " from random weights" : "");
    } else {
        char tg[160] = "";
        for (int t = 0; t < US_T_COUNT; t++)
            if (m->spec.lora.targets & (1u << t)) {
                if (tg[0]) strcat(tg, ",");
                strcat(tg, us_target_name(t));
            }
        us_report_param(r, run, "method", "LoRA r %d, alpha %g%s, targets %s", m->spec.lora.r, m->spec.lora.alpha,
                        m->spec.lora.rslora ? " (rsLoRA)" : "", tg);
    }
    us_report_param(r, run, "trainable parameters", "%zu", m->n_params);
    us_report_param(r, run, "optimizer", "AdamW lr %g, betas (%g, %g), eps %g, weight decay %g, clip %g", o->lr, o->beta1,
                    o->beta2, o->eps, o->weight_decay, o->grad_clip);
    us_report_param(r, run, "schedule", "%s, warmup %d", o->schedule <= US_SCHED_COSINE ? sched[o->schedule] : "?",
                    o->warmup);
    us_report_param(r, run, "batch", "%d rows x grad-accum %d, %d steps", o->batch, o->grad_accum, n);
    us_report_param(r, run, "device", "%s", m->be->name);
    us_report_param(r, run, "seed", "%llu", (unsigned long long)o->seed);
    if (n > 0) us_report_param(r, run, "loss", "%.4f at step %.0f -> %.4f at step %.0f", loss[0], x[0], loss[n - 1], x[n - 1]);
    char label[160];
    snprintf(label, sizeof label, "%s", run);
    us_report_plan(r, label, m);
}

/* ---- rendering ---- */

typedef struct buf {
    char *p;
    size_t n, cap;
    bool oom;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf *b, const char *fmt, ...) {
    if (b->oom) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if (b->n + (size_t)k + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 65536) + (size_t)k;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

static void put_esc(buf *b, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': put(b, "&lt;"); break;
        case '>': put(b, "&gt;"); break;
        case '&': put(b, "&amp;"); break;
        case '"': put(b, "&quot;"); break;
        default: put(b, "%c", *s);
        }
    }
}

static const char *COLORS[] = {"#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"};

static double nice_step(double span, int target) {
    double raw = span / target, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

static void fmt_num(char *o, size_t cap, double v) {
    double a = fabs(v);
    if (v == 0) snprintf(o, cap, "0");
    else if (a >= 1e7) snprintf(o, cap, "%.0e", v);
    else if (a < 1e-3) snprintf(o, cap, "%.3g", v);
    else if (a >= 1000) snprintf(o, cap, "%.0f", v);
    else snprintf(o, cap, "%.4g", v);
}

static void render_chart(buf *b, const chart *c) {
    const double W = 640, H = 260, L = 64, R = 16, T = 34, B = 40;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    bool pos = true;
    int total = 0;
    for (int i = 0; i < c->ns; i++)
        for (int k = 0; k < c->s[i].n; k++) {
            double x = c->s[i].x[k], y = c->s[i].y[k];
            if (!isfinite(x) || !isfinite(y)) continue;
            x0 = fmin(x0, x), x1 = fmax(x1, x), y0 = fmin(y0, y), y1 = fmax(y1, y);
            pos = pos && y > 0;
            total++;
        }
    put(b, "<figure class=\"panel\"><svg class=\"chart\" viewBox=\"0 0 640 260\" role=\"img\" data-title=\"");
    put_esc(b, c->title);
    put(b, "\" data-series=\"%d\" xmlns=\"http://www.w3.org/2000/svg\">\n", c->ns);
    put(b, "<rect x=\"0\" y=\"0\" width=\"640\" height=\"260\" fill=\"#fff\"/>\n");
    put(b, "<text x=\"%g\" y=\"20\" class=\"ct\">", L);
    put_esc(b, c->title);
    put(b, "</text>\n");
    if (!total) {
        put(b, "<text x=\"320\" y=\"140\" text-anchor=\"middle\" class=\"ax\">no data</text></svg></figure>\n");
        return;
    }
    bool logy = pos && y1 / y0 > 100;
    double ly0 = logy ? floor(log10(y0)) : y0, ly1 = logy ? ceil(log10(y1)) : y1;
    if (!logy) {
        double pad = (y1 - y0) * 0.05;
        if (pad == 0) pad = fabs(y0) * 0.1 + 1e-9;
        ly0 = y0 - pad, ly1 = y1 + pad;
        if (y0 >= 0 && ly0 < 0) ly0 = 0;
    }
    if (x1 == x0) x1 = x0 + 1;
    double pw = W - L - R, ph = H - T - B;
#define PX(x) (L + ((x) - x0) / (x1 - x0) * pw)
#define PY(y) (T + ph - (((logy ? log10(y) : (y)) - ly0) / (ly1 - ly0)) * ph)
    /* grid and y ticks */
    put(b, "<g class=\"grid\">\n");
    char lab[32];
    if (logy) {
        for (double d = ly0; d <= ly1 + 1e-9; d += 1) {
            double y = T + ph - (d - ly0) / (ly1 - ly0) * ph;
            fmt_num(lab, sizeof lab, pow(10, d));
            put(b, "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\"/><text x=\"%g\" y=\"%.1f\" class=\"ax\" text-anchor=\"end\">%s</text>\n",
                L, y, W - R, y, L - 6, y + 4, lab);
        }
    } else {
        double st = nice_step(ly1 - ly0, 5);
        for (double v = ceil(ly0 / st) * st; v <= ly1 + st * 1e-6; v += st) {
            double y = PY(v);
            fmt_num(lab, sizeof lab, fabs(v) < st * 1e-6 ? 0 : v);
            put(b, "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\"/><text x=\"%g\" y=\"%.1f\" class=\"ax\" text-anchor=\"end\">%s</text>\n",
                L, y, W - R, y, L - 6, y + 4, lab);
        }
    }
    double xs = nice_step(x1 - x0, 6);
    for (double v = ceil(x0 / xs) * xs; v <= x1 + xs * 1e-6; v += xs) {
        fmt_num(lab, sizeof lab, v);
        put(b, "<text x=\"%.1f\" y=\"%g\" class=\"ax\" text-anchor=\"middle\">%s</text>\n", PX(v), H - B + 16, lab);
    }
    put(b, "</g>\n<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" class=\"axis\"/><line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" class=\"axis\"/>\n",
        L, T, L, T + ph, L, T + ph, W - R, T + ph);
    put(b, "<text x=\"%g\" y=\"%g\" class=\"ax\" text-anchor=\"middle\">step%s</text>\n", L + pw / 2, H - 6,
        logy ? "   (y: log scale)" : "");
    size_t longest = 0;
    for (int i = 0; i < c->ns; i++) longest = strlen(c->s[i].name) > longest ? strlen(c->s[i].name) : longest;
    /* curves and legend */
    for (int i = 0; i < c->ns; i++) {
        const series *s = &c->s[i];
        const char *col = COLORS[i % 8];
        int stride = s->n > 2000 ? (s->n + 1999) / 2000 : 1, pts = 0;
        put(b, "<polyline class=\"series\" data-name=\"");
        put_esc(b, s->name);
        put(b, "\" data-points=\"%d\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"", s->n, col);
        for (int k = 0; k < s->n; k += stride) {
            double x = s->x[k], y = s->y[k];
            if (!isfinite(x) || !isfinite(y) || (logy && y <= 0)) continue;
            put(b, "%.1f,%.1f ", PX(x), PY(y));
            pts++;
        }
        put(b, "\"/>\n");
        if (pts == 1) /* a single point: show a dot */
            for (int k = 0; k < s->n; k++)
                if (isfinite(s->y[k])) put(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", PX(s->x[k]), PY(s->y[k]), col);
        double lx = W - R - 34 - 6.6 * (double)(longest > 60 ? 60 : longest), ly = T + 14 + 16 * i;
        put(b, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"%s\" stroke-width=\"3\"/><text x=\"%g\" y=\"%g\" class=\"lg\">",
            lx, ly - 4, lx + 18, ly - 4, col, lx + 24, ly);
        put_esc(b, s->name);
        put(b, "</text>\n");
    }
#undef PX
#undef PY
    put(b, "</svg></figure>\n");
}

static void render_plan(buf *b, const plan_rec *p) {
    put(b, "<h3>");
    put_esc(b, p->label);
    put(b, "</h3>\n<p>Saved for backward: <b>%.0f bytes per token</b> against %.0f for storing every forward "
           "intermediate (<b>%.1f%%</b> of it; %s backend, %zu-byte activations). Step arena %.1f MiB for %d tokens.</p>\n",
        p->total, p->store_all, p->store_all > 0 ? 100.0 * p->total / p->store_all : 0, p->backend, p->act_bytes,
        p->arena_mib, p->max_tokens);
    double mx = p->store_all > p->total ? p->store_all : p->total;
    if (mx <= 0) mx = 1;
    int rows = 0;
    for (int k = 0; k < US_SAVE_KINDS; k++) rows += p->per_kind[k] > 0;
    double H = 24.0 * (rows + 2) + 8;
    put(b, "<svg class=\"membars\" viewBox=\"0 0 640 %.0f\" xmlns=\"http://www.w3.org/2000/svg\">\n", H);
    int i = 0;
    for (int k = 0; k <= US_SAVE_KINDS + 1; k++) {
        double v;
        const char *name, *col;
        if (k < US_SAVE_KINDS) {
            if (!(p->per_kind[k] > 0)) continue;
            v = p->per_kind[k], name = us_save_kind_name(k), col = "#60a5fa";
        } else if (k == US_SAVE_KINDS) {
            v = p->total, name = "total (plan)", col = "#2563eb";
        } else {
            v = p->store_all, name = "store-everything", col = "#9ca3af";
        }
        double y = 4 + 24.0 * i++, w = 380 * v / mx;
        put(b, "<text x=\"150\" y=\"%.0f\" text-anchor=\"end\" class=\"lg\">%s</text><rect x=\"158\" y=\"%.0f\" width=\"%.1f\" "
               "height=\"16\" fill=\"%s\"/><text x=\"%.1f\" y=\"%.0f\" class=\"lg\">%.0f B</text>\n",
            y + 13, name, y, w < 1 ? 1 : w, col, 164 + w, y + 13, v);
    }
    put(b, "</svg>\n");
}

us_status us_report_write(const us_report *r, const char *path, us_err *e) {
    buf b = {0};
    char when[64];
    time_t now = time(NULL);
    struct tm tmv;
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime_r(&now, &tmv));
    put(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>");
    put_esc(&b, r->title);
    put(&b, "</title>\n<style>\n"
            "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1360px;"
            "color:#111827;background:#f3f4f6;padding:0 16px}\n"
            "h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 10px} h3{font-size:15px;margin:14px 0 4px}\n"
            ".sub{color:#6b7280;margin:0 0 16px}\n"
            ".charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px}\n"
            ".panel{margin:0;background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:6px}\n"
            "svg{width:100%%;height:auto;display:block} svg.membars{max-width:760px} .ct{font-size:14px;font-weight:600;fill:#111827}\n"
            ".ax{font-size:11px;fill:#6b7280} .lg{font-size:12px;fill:#374151} .grid line{stroke:#eef0f3}\n"
            ".axis{stroke:#9ca3af} table{border-collapse:collapse;background:#fff;width:100%%}\n"
            "td,th{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top} th{background:#f9fafb}\n"
            ".card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px;margin-bottom:12px}\n"
            "pre{background:#111827;color:#e5e7eb;padding:10px;border-radius:6px;overflow:auto;font-size:12.5px}\n"
            "</style></head><body>\n<h1>");
    put_esc(&b, r->title);
    put(&b, "</h1>\n<p class=\"sub\">unswag %s &middot; written %s</p>\n", us_version_string(), when);
    for (int i = 0; i < r->nn; i++) {
        put(&b, "<div class=\"card note\"><h3>");
        put_esc(&b, r->notes[i].heading);
        put(&b, "</h3><pre>");
        put_esc(&b, r->notes[i].text);
        put(&b, "</pre></div>\n");
    }
    if (r->nc) {
        put(&b, "<h2>Curves</h2>\n<div class=\"charts\">\n");
        for (int c = 0; c < r->nc; c++) render_chart(&b, &r->charts[c]);
        put(&b, "</div>\n");
    }
    if (r->np) {
        put(&b, "<h2>Memory plan</h2>\n<div class=\"card plan\">\n");
        for (int i = 0; i < r->np; i++) render_plan(&b, &r->plans[i]);
        put(&b, "</div>\n");
    }
    if (r->nkv) {
        put(&b, "<h2>Configuration</h2>\n<table class=\"config\"><tr><th>run</th><th>setting</th><th>value</th></tr>\n");
        for (int i = 0; i < r->nkv; i++) {
            put(&b, "<tr><td>");
            put_esc(&b, r->kvs[i].section);
            put(&b, "</td><td>");
            put_esc(&b, r->kvs[i].key);
            put(&b, "</td><td>");
            put_esc(&b, r->kvs[i].val);
            put(&b, "</td></tr>\n");
        }
        put(&b, "</table>\n");
    }
    put(&b, "</body></html>\n");
    us_status st;
    if (b.oom)
        st = us_fail(e, US_ENOMEM, "%s: out of memory rendering the report", path);
    else
        st = us_write_file_atomic(path, b.p, b.n, e);
    free(b.p);
    return st;
}
