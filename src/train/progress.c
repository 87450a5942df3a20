/* progress.c — the live training line, plain periodic lines, and the ASCII plot.
 *
 * The live line is redrawn as "\r<text>\033[K" (clear to end of line) so a shorter line never
 * leaves debris; it is throttled by wall time, except that the last step always shows. Plain
 * mode prints a line every `every` steps and whenever 30 s passed since the last one. Both
 * report the mean loss over the steps since the previous print. */
#include "train/progress.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

void us_format_duration(char *buf, size_t cap, double s) {
    if (!(s >= 0) || s > 1e8) {
        snprintf(buf, cap, "?");
    } else if (s < 60) {
        snprintf(buf, cap, "%.1fs", s);
    } else if (s < 3600) {
        snprintf(buf, cap, "%dm%02ds", (int)s / 60, (int)s % 60);
    } else {
        snprintf(buf, cap, "%dh%02dm", (int)s / 3600, ((int)s / 60) % 60);
    }
}

void us_progress_init(us_progress *p, FILE *f, int total_steps, bool quiet, int force_tty) {
    memset(p, 0, sizeof *p);
    p->f = f;
    p->quiet = quiet;
    p->total = total_steps;
    p->tty = force_tty < 0 ? isatty(fileno(f)) : force_tty;
    p->every = total_steps >= 20 ? total_steps / 20 : 1;
    p->t_start = p->t_last_print = now_s();
}

void us_progress_step(us_progress *p, int step, double loss, double lr, double tps, size_t mem) {
    if (p->quiet) return;
    if (isfinite(loss)) {
        p->loss_acc += loss;
        p->loss_n++;
    }
    double t = now_s(), elapsed = t - p->t_start;
    bool last = step >= p->total;
    bool due = p->tty ? (t - p->t_last_print >= 0.125 || last || step == 1)
                      : (step == 1 || last || step % p->every == 0 || t - p->t_last_print >= 30);
    if (!due) return;
    double shown = p->loss_n ? p->loss_acc / p->loss_n : loss;
    char eta[32], el[32], memtxt[48] = "";
    us_format_duration(eta, sizeof eta, step ? elapsed / step * (p->total - step) : 0);
    us_format_duration(el, sizeof el, elapsed);
    if (mem) snprintf(memtxt, sizeof memtxt, "  mem %.1f MiB", mem / 1048576.0);
    int w = snprintf(NULL, 0, "%d", p->total);
    if (p->tty) {
        int pct = p->total ? (int)(100.0 * step / p->total) : 100;
        fprintf(p->f, "\rstep %*d/%d %3d%%  loss %.4f  lr %.3g  %.0f tok/s  %s, eta %s%s\033[K", w, step, p->total,
                pct, shown, lr, tps, el, eta, memtxt);
        p->open_line = true;
    } else {
        fprintf(p->f, "step %*d/%d  loss %.4f  lr %.3g  %.0f tok/s  elapsed %s  eta %s%s\n", w, step, p->total, shown,
                lr, tps, el, eta, memtxt);
    }
    fflush(p->f);
    p->t_last_print = t;
    p->loss_acc = 0;
    p->loss_n = 0;
    p->last_step = step;
}

void us_progress_note(us_progress *p, const char *msg) {
    if (p->open_line) {
        fputc('\n', p->f);
        p->open_line = false;
    }
    fprintf(p->f, "%s\n", msg);
    fflush(p->f);
}

void us_progress_end(us_progress *p) {
    if (p->open_line) fputc('\n', p->f);
    p->open_line = false;
    fflush(p->f);
}

void us_ascii_plot(FILE *f, const char *title, const double *y, int n, int width, int height) {
    if (n <= 0 || width < 8 || height < 2 || width > 512 || height > 128) return;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++)
        if (isfinite(y[i])) {
            lo = fmin(lo, y[i]);
            hi = fmax(hi, y[i]);
        }
    if (!isfinite(lo)) return;
    bool logy = lo > 0 && hi / lo > 100; /* a loss falling over decades: plot log10 */
#define TR(v) (logy ? log10(v) : (v))
    double vlo = TR(lo), vhi = TR(hi);
    if (vhi - vlo < 1e-12) vhi = vlo + 1;
    char grid[128][513];
    for (int r = 0; r < height; r++) {
        memset(grid[r], ' ', (size_t)width);
        grid[r][width] = 0;
    }
    /* each column shows the mean of the points that fall into it */
    for (int c = 0; c < width; c++) {
        int a = (int)((long)c * n / width), b = (int)((long)(c + 1) * n / width);
        if (b <= a) b = a + 1;
        if (a >= n) break;
        double s = 0;
        int k = 0;
        for (int i = a; i < b && i < n; i++)
            if (isfinite(y[i])) s += y[i], k++;
        if (!k) continue;
        double v = TR(s / k);
        int r = (int)lround((vhi - v) / (vhi - vlo) * (height - 1));
        grid[r < 0 ? 0 : r >= height ? height - 1 : r][c] = '*';
    }
    fprintf(f, "  %s%s\n", title, logy ? " (log scale)" : "");
    for (int r = 0; r < height; r++) {
        double v = vhi - (vhi - vlo) * r / (height - 1);
        if (logy) v = pow(10, v);
        if (r == 0 || r == height - 1 || r == height / 2)
            fprintf(f, "  %8.3f |%s\n", v, grid[r]);
        else
            fprintf(f, "  %8s |%s\n", "", grid[r]);
    }
    fprintf(f, "  %8s +", "");
    for (int c = 0; c < width; c++) fputc('-', f);
    fprintf(f, "\n  %8s  step 1%*d\n", "", width - 6, n);
#undef TR
}
