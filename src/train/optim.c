/* optim.c — learning-rate schedules. The update itself (AdamW) is a backend op over the flat
 * parameter buffer; see backend.h for its exact formula (torch.optim.AdamW's). */
#include "train/optim.h"

#include <math.h>
#include <string.h>

double us_lr_at(us_schedule s, double base, int step, int warmup, int total) {
    if (warmup > 0 && step < warmup) return base * (double)step / (double)warmup;
    if (s == US_SCHED_CONSTANT) return base;
    int span = total - warmup;
    if (span < 1) span = 1;
    double progress = (double)(step - warmup) / span;
    if (s == US_SCHED_LINEAR) return base * fmax(0.0, 1.0 - progress);
    return base * fmax(0.0, 0.5 * (1.0 + cos(M_PI * progress)));
}

int us_schedule_parse(const char *name, us_schedule *out) {
    static const char *names[] = {"constant", "linear", "cosine"};
    for (int i = 0; i < 3; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (us_schedule)i;
            return 1;
        }
    return 0;
}
