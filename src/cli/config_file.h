/* config_file.h — options from a YAML file (--config FILE), for every subcommand.
 * See config_file.c: the file's flat mapping becomes flags placed before the command line's,
 * so the command line overrides the file. */
#ifndef US_CONFIG_FILE_H
#define US_CONFIG_FILE_H

#include "core/common.h"

/* argv (after the command name) with any "--config FILE" replaced by the file's options, first.
 * *out_argv is NULL-terminated; free with us_config_argv_free. */
us_status us_config_expand(int argc, char **argv, int *out_argc, char ***out_argv, us_err *e);
void us_config_argv_free(int argc, char **argv);

#endif
