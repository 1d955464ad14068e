// `node node_caller.mjs SUBMIT_URL PROMPT`: the EventSource caller on Node's `eventsource` package.
// Prints the completion (exit 0) or the failure on stderr (exit 1), as serve-callers expects.
import { EventSource } from "eventsource";

import "./eventsource_caller.js";

const [submitUrl, prompt] = process.argv.slice(2);
if (!submitUrl || prompt === undefined) {
  process.stderr.write("usage: node node_caller.mjs SUBMIT_URL PROMPT\n");
  process.exit(2);
}
try {
  const text = await globalThis.dualcallCall(EventSource, submitUrl, prompt);
  process.stdout.write(`${text}\n`);
  process.exit(0);
} catch (error) {
  process.stderr.write(`node eventsource caller: ${error.message}\n`);
  process.exit(1);
}
