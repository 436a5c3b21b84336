// The command line of bin/mrt-stream.mjs: the Node.js twin of `mrt stream`.
// Connection options also read MRT_ADDRESS, MRT_API_KEY, MRT_TLS_CA, MRT_TLS_CERT, MRT_TLS_KEY.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import grpc from "@grpc/grpc-js";

import { RECONNECT_DEFAULTS, connect, streamToWav } from "./client.mjs";

const USAGE = `usage: mrt-stream.mjs [--address HOST:PORT] [--api-key KEY] [--tls-ca PEM]
       [--tls-cert PEM --tls-key PEM] [--prompt TEXT[:WEIGHT]]... [--audio-prompt FILE[:WEIGHT]]...
       [--temperature T] [--top-k K] [--guidance G] [--seed S] [--model NAME]
       [--seconds 20] [--out mrt_stream.wav] [--max-reconnects 10]`;

class UsageError extends Error {}

/** "text:0.5" -> ["text", 0.5]; the weight is split off only when it is a number. */
export function splitWeight(spec) {
  const colon = spec.lastIndexOf(":");
  const tail = colon < 0 ? "" : spec.slice(colon + 1);
  if (colon < 0 || tail.trim() === "" || Number.isNaN(Number(tail))) return [spec, undefined];
  const weight = Number(tail);
  if (!Number.isFinite(weight) || weight < 0) {
    throw new UsageError(`prompt weight must be a finite number >= 0, got '${tail}' in '${spec}'`);
  }
  return [spec.slice(0, colon), weight];
}

function number(name, text, { integer = false } = {}) {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new UsageError(`--${name} must be ${integer ? "an integer" : "a number"}, got '${text}'`);
  }
  return value;
}

function parse(argv) {
  const env = process.env;
  const { values } = parseArgs({
    args: argv,
    options: {
      address: { type: "string", default: env.MRT_ADDRESS ?? "127.0.0.1:50051" },
      "api-key": { type: "string", default: env.MRT_API_KEY },
      "tls-ca": { type: "string", default: env.MRT_TLS_CA },
      "tls-cert": { type: "string", default: env.MRT_TLS_CERT },
      "tls-key": { type: "string", default: env.MRT_TLS_KEY },
      prompt: { type: "string", multiple: true, default: [] },
      "audio-prompt": { type: "string", multiple: true, default: [] },
      temperature: { type: "string" },
      "top-k": { type: "string" },
      guidance: { type: "string" },
      seed: { type: "string" },
      model: { type: "string", default: "" },
      seconds: { type: "string", default: "20" },
      out: { type: "string", default: "mrt_stream.wav" },
      "max-reconnects": { type: "string", default: String(RECONNECT_DEFAULTS.maxAttempts) },
      help: { type: "boolean", default: false },
    },
  });
  const prompts = [];
  for (const spec of values.prompt) {
    const [text, weight] = splitWeight(spec);
    if (!text.trim()) throw new UsageError(`prompt text is empty in '${spec}'`);
    prompts.push({ text, weight });
  }
  for (const spec of values["audio-prompt"]) {
    const [path, weight] = splitWeight(spec);
    let audio;
    try {
      audio = readFileSync(path);
    } catch (error) {
      throw new UsageError(`cannot read audio prompt '${path}': ${error.message}`);
    }
    prompts.push({ audio, weight });
  }
  const config = Object.fromEntries(Object.entries({
    temperature: number("temperature", values.temperature),
    topK: number("top-k", values["top-k"], { integer: true }),
    guidance: number("guidance", values.guidance),
    seed: number("seed", values.seed, { integer: true }),
  }).filter(([, value]) => value !== undefined));
  const seconds = number("seconds", values.seconds);
  if (!(seconds > 0)) throw new UsageError(`--seconds must be > 0, got '${values.seconds}'`);
  const maxReconnects = number("max-reconnects", values["max-reconnects"], { integer: true });
  if (maxReconnects < 0) {
    throw new UsageError(`--max-reconnects must be >= 0, got '${values["max-reconnects"]}'`);
  }
  return { values, prompts, config: Object.keys(config).length ? config : undefined, seconds,
           maxReconnects };
}

/** Runs the command; resolves to its exit status (0 ok, 1 failed, 2 bad usage). */
export async function main(argv) {
  let options;
  try {
    options = parse(argv);
  } catch (error) {
    process.stderr.write(`${error.message}\n${USAGE}\n`);
    return 2;
  }
  const { values, prompts, config, seconds, maxReconnects } = options;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  let connection;
  try {
    connection = connect({ address: values.address, apiKey: values["api-key"],
                           tlsCa: values["tls-ca"], tlsCert: values["tls-cert"],
                           tlsKey: values["tls-key"] });
  } catch (error) {
    process.stderr.write(`${error.message}\n`);
    return 2;
  }
  try {
    const summary = await streamToWav(connection, {
      seconds, out: values.out, prompts, config, model: values.model,
      reconnect: { maxAttempts: maxReconnects },
      onNotice: (text) => process.stderr.write(`${text}\n`),
      onMessage: (response) => {
        if (response.warning) {
          process.stderr.write(`warning [${response.warning.code}]: ${response.warning.message}\n`);
        } else if (response.promptStatus && !response.promptStatus.accepted) {
          process.stderr.write(`prompts refused: ${response.promptStatus.message}\n`);
        }
      },
    });
    const resumed = summary.reconnects ? `; resumed ${summary.reconnects} time(s)` : "";
    process.stderr.write(`wrote ${summary.seconds.toFixed(2)} s (${summary.chunks} chunks) of ` +
                         `session ${summary.sessionId} to ${values.out}${resumed}\n`);
    return 0;
  } catch (error) {
    const status = error.code === undefined ? "" : `${grpc.status[error.code] ?? error.code}: `;
    process.stderr.write(`mrt-stream: ${status}${error.details ?? error.message}\n`);
    return 1;
  } finally {
    connection.client.close();
  }
}
