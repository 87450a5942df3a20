/* commands.h — the subcommands of the `unswag` CLI. Each takes argc/argv after the command name
 * and returns the process exit status; each prints its own --help. main.c dispatches. */
#ifndef US_COMMANDS_H
#define US_COMMANDS_H

int cmd_train(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_merge(int argc, char **argv);

#endif
