# demo.mk — `make demo`, the README's main command (included by the Makefile).
#
# Builds the CLI, then runs `unswag demo`: a tiny Llama-architecture model pretrained from
# scratch on a synthetic token language and LoRA-fine-tuned on a task it has never seen, all
# in-process with nothing downloaded (src/cli/cmd_demo.c). Output lands in $(BUILD)/demo.
# DEMO_FLAGS passes options through, e.g. `make demo DEMO_FLAGS="--device cpu --quick"`.

DEMO_FLAGS ?=

demo: $(BUILD)/unswag
	$(BUILD)/unswag demo --out $(BUILD)/demo $(DEMO_FLAGS)

# --config FILE.yaml (src/cli/config_file.c) parses YAML with libyaml (Debian libyaml-dev, listed
# in scripts/deps.sh). Appended here so the Makefile itself stays untouched; LDLIBS is expanded
# when the link runs, after this file is read.
LDLIBS += $(shell pkg-config --libs yaml-0.1 2>/dev/null || echo -lyaml)
