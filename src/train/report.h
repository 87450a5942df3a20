/* report.h — a training run's record as one self-contained HTML page.
 *
 * The page has no external resources (no scripts, fonts or images to fetch): inline CSS and
 * inline SVG line charts (train and eval loss, learning rate, tokens/s — any named series), the
 * run's configuration as a table, the activation plan's memory breakdown (saved bytes per token
 * by kind, drawn as bars beside the store-everything figure), and free-text notes. A report is
 * filled piecemeal (the trainer adds its curves, configuration and plan; the demo adds two runs
 * and its results) and written atomically. Loss charts switch to a log scale by themselves when
 * the values span more than two decades. */
#ifndef US_REPORT_H
#define US_REPORT_H

#include "core/common.h"

struct us_model;
typedef struct us_report us_report;

us_report *us_report_new(const char *title); /* NULL when out of memory */
void us_report_free(us_report *r);

/* A row of the configuration table, under a section heading (e.g. the run's name). */
void us_report_param(us_report *r, const char *section, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A paragraph of preformatted text under a heading (escaped on output). */
void us_report_note(us_report *r, const char *heading, const char *text);
/* Adds a curve to the chart titled `chart` (created on first use, charts keep their order).
 * x may be NULL (then 1..n). The data are copied. */
us_status us_report_series(us_report *r, const char *chart, const char *series, const double *x, const double *y,
                           int n);
/* The memory plan of a prepared model (bytes per token by kind vs store-everything), labelled. */
void us_report_plan(us_report *r, const char *label, const struct us_model *m);

/* The trainer's record of one run, named `run` (e.g. "pretraining"): its configuration rows,
 * the plan, a loss chart (train and, when n_eval > 0, eval loss) and the learning-rate and
 * tokens/s curves (charts shared between runs). x: the step of each of the n points. */
struct us_train_opts;
void us_report_add_run(us_report *r, const char *run, const struct us_train_opts *o, const struct us_model *m,
                       const double *x, const double *loss, const double *lr, const double *tps, int n,
                       const double *eval_x, const double *eval_y, int n_eval);

/* Writes the page (tmp file + rename). */
us_status us_report_write(const us_report *r, const char *path, us_err *e);

#endif
