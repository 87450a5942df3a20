/* optim.h — learning-rate schedules (as transformers defines them) and the AdamW step count. */
#ifndef US_OPTIM_H
#define US_OPTIM_H

typedef enum us_schedule { US_SCHED_CONSTANT = 0, US_SCHED_LINEAR, US_SCHED_COSINE } us_schedule;

/* The learning rate of update `step` (0-based) of `total`, warmup linear from 0: transformers'
 * get_{constant,linear,cosine}_schedule_with_warmup evaluated at that step. */
double us_lr_at(us_schedule s, double base, int step, int warmup, int total);
/* "constant" | "linear" | "cosine"; false when unknown */
int us_schedule_parse(const char *name, us_schedule *out);

#endif
