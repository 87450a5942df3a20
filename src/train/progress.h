/* progress.h — what a training run shows while it runs.
 *
 * On a terminal (isatty of the stream): one live line rewritten in place with \r — step/total,
 * loss, lr, tokens/s, ETA, memory — at most ~8 times a second, finished with a newline. Not on a
 * terminal (CI logs, pipes): plain lines, about 20 per run (every total/20 steps) plus the first
 * and the last step and at least one every 30 s. The loss shown is the mean since the previous
 * line, so a noisy run still reads smoothly. Also the ASCII plot the demo prints. */
#ifndef US_PROGRESS_H
#define US_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct us_progress {
    FILE *f;
    bool tty, quiet;
    int total, every, last_step;
    double t_start, t_last_print;
    double loss_acc;
    int loss_n;
    bool open_line; /* a \r line is on screen */
} us_progress;

/* force_tty: -1 decides by isatty(fileno(f)), 0 plain lines, 1 live line. */
void us_progress_init(us_progress *p, FILE *f, int total_steps, bool quiet, int force_tty);
/* After optimizer step `step` (1-based). mem_bytes: device memory in use (0: not shown). */
void us_progress_step(us_progress *p, int step, double loss, double lr, double tokens_per_s, size_t mem_bytes);
/* A message that must not be overwritten by the live line (e.g. a skipped step). */
void us_progress_note(us_progress *p, const char *msg);
void us_progress_end(us_progress *p);

/* "1m05s", "12.3s", "2h03m" */
void us_format_duration(char *buf, size_t cap, double seconds);

/* An ASCII line plot of y[0..n) (x = index), width x height characters, with the y range on the
 * left and the title above. Nothing is printed when n == 0. */
void us_ascii_plot(FILE *f, const char *title, const double *y, int n, int width, int height);

#endif
