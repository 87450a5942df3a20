/* args.h — strict parsing of option values for the CLI: a bad number is an error naming the flag. */
#ifndef US_ARGS_H
#define US_ARGS_H

#include <stdbool.h>
#include <stdint.h>

/* Each returns false after printing "unswag: FLAG VALUE: ..." to stderr. */
bool us_arg_int(const char *flag, const char *v, long lo, long hi, int *out);
bool us_arg_u64(const char *flag, const char *v, uint64_t *out);
bool us_arg_double(const char *flag, const char *v, double *out);
/* argv[*i] is a flag that takes a value: returns the value and advances *i, or prints an error. */
const char *us_arg_value(int argc, char **argv, int *i);

#endif
