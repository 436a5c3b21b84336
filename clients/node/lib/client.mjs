// The cluster's public API (mrt.v1.MusicGeneration) from Node.js, loaded from protos/ at run
// time with @grpc/proto-loader: no generated stubs to keep in step with the .proto files.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

import { WavWriter } from "./wav.mjs";

export const PROTOS_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "protos");

/** The MusicGeneration client class (field names in camelCase, enums as strings). */
export function loadMusicGeneration(protosDir = PROTOS_DIR) {
  const definition = protoLoader.loadSync("mrt/v1/music.proto", {
    includeDirs: [protosDir], keepCase: false, longs: Number, enums: String, defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).mrt.v1.MusicGeneration;
}

// Streams are spread over every address of the target (e.g. "ipv4:HOST:PORT,HOST:PORT"), and a
// resumed stream goes to a gateway that is up.
const CHANNEL_OPTIONS = {
  "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
};

/**
 * A client for the gateway at `address` ("host:port", or several gateways as
 * "ipv4:HOST:PORT,HOST:PORT"): plaintext, or TLS trusting the PEM CA file `tlsCa` (and
 * presenting `tlsCert` / `tlsKey` to a gateway that requires client certificates). Calls carry
 * `authorization: Bearer <apiKey>` when a key is given.
 */
export function connect({ address = "127.0.0.1:50051", apiKey, tlsCa, tlsCert, tlsKey } = {}) {
  if ((tlsCert === undefined) !== (tlsKey === undefined)) {
    throw new Error("--tls-cert and --tls-key must be given together");
  }
  if (tlsCert !== undefined && tlsCa === undefined) throw new Error("--tls-cert needs --tls-ca");
  const credentials = tlsCa === undefined
    ? grpc.credentials.createInsecure()
    : grpc.credentials.createSsl(readFileSync(tlsCa),
        tlsKey === undefined ? null : readFileSync(tlsKey),
        tlsCert === undefined ? null : readFileSync(tlsCert));
  const MusicGeneration = loadMusicGeneration();
  const client = new MusicGeneration(address, credentials, CHANNEL_OPTIONS);
  const metadata = new grpc.Metadata();
  if (apiKey) metadata.set("authorization", `Bearer ${apiKey}`);
  return { client, metadata };
}

/** ListModels, as a promise. */
export function listModels({ client, metadata }) {
  return new Promise((resolve, reject) => {
    client.listModels({}, metadata, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

// Status codes of a lost stream (or gateway), not of a wrong request: the session is resumed.
// Every other code is final: NOT_FOUND (an unknown or expired token), PERMISSION_DENIED
// (another key's token), OUT_OF_RANGE, UNAUTHENTICATED, INVALID_ARGUMENT, ...
export const RESUMABLE_CODES = new Set([
  grpc.status.UNAVAILABLE, grpc.status.CANCELLED, grpc.status.INTERNAL, grpc.status.UNKNOWN,
]);

/**
 * Defaults of streamToWav's `reconnect` option. After a lost stream the first resume waits
 * `initialBackoffMs`, each next one twice as long, at most `maxBackoffMs`; once `maxAttempts`
 * resumes in a row were lost before they brought audio, the recording fails with the last
 * error (0: a lost stream is final). With these defaults that is about 13 s of retries.
 */
export const RECONNECT_DEFAULTS = Object.freeze({
  maxAttempts: 10, initialBackoffMs: 100, maxBackoffMs: 2000,
});

/** The wait before a resume that follows `attempts` resumes in a row that brought no audio. */
export function backoffDelayMs(attempts, { initialBackoffMs, maxBackoffMs } = RECONNECT_DEFAULTS) {
  return Math.min(maxBackoffMs, initialBackoffMs * 2 ** attempts);
}

function reconnectOptions(reconnect) {
  const options = { ...RECONNECT_DEFAULTS, ...reconnect };
  for (const name of Object.keys(RECONNECT_DEFAULTS)) {
    const value = options[name];
    const integer = name === "maxAttempts";
    if (!(Number.isFinite(value) && value >= 0) || (integer && !Number.isInteger(value))) {
      throw new Error(`reconnect.${name} must be ${integer ? "an integer" : "a number"} >= 0, ` +
                      `got ${value}`);
    }
  }
  return options;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Chunk durations are floats: "within a microsecond of the target" reaches it.
const SECONDS_TOLERANCE = 1e-6;

/**
 * Records `seconds` of a new session (rounded up to whole chunks) into a WAV file: sends
 * setup, the prompts ([{text, weight}] or [{audio: Buffer, weight}]), the config (if any) and
 * PLAY, and writes chunks as they come. `onMessage` sees every other response (prompt status,
 * warnings); `onNotice` gets a line of text for what the client itself does (reconnects).
 *
 * A lost stream (a status in RESUMABLE_CODES) or a gateway's `warning` RECONNECT is resumed on a
 * new stream whose setup carries the session's resume token and the sequence of the first chunk
 * not yet written; a chunk whose sequence was written already is dropped, so the file has no
 * gap and no repeat. On RECONNECT the new stream opens at once and the old one is then
 * cancelled; after a loss the retry waits (exponential backoff, see RECONNECT_DEFAULTS; override
 * any of them with `reconnect: {maxAttempts, initialBackoffMs, maxBackoffMs}`, and inject
 * `reconnect.sleep(ms)` to replace the clock). Without a resume token (the gateway could not
 * reach its session store) a loss is final.
 *
 * Resolves to {sessionId, chunks, seconds, reconnects}; rejects with the gRPC error that ended
 * it, or when the server ends the stream early. Audio written before a failure stays in the file.
 */
export function streamToWav({ client, metadata }, { seconds, out, prompts = [], config, model = "",
                                                   onMessage = () => {}, onNotice = () => {},
                                                   reconnect = {} }) {
  return new Promise((resolve, reject) => {
    const retry = reconnectOptions(reconnect);
    const wait = reconnect.sleep ?? sleep;
    let call = null; // the current stream: events of earlier ones are ignored
    let writer = null;
    let format = null; // the SessionStarted of the first stream
    let sessionId = "";
    let token = "";
    let nextSequence = 0; // the sequence of the first chunk not yet written
    let chunks = 0;
    let reconnects = 0;
    let attempts = 0; // resumes after a loss since audio last came
    let progressed = false; // the current stream brought audio
    let finished = false;

    const finish = (error, value) => {
      if (finished) return;
      finished = true;
      if (writer) writer.close();
      const last = call;
      call = null; // its cancellation is no loss
      last?.cancel();
      if (error) reject(error);
      else resolve(value);
    };

    const open = () => {
      if (finished) return;
      const previous = call;
      let current;
      try {
        current = client.stream(metadata);
      } catch (error) {
        return finish(error);
      }
      call = current;
      progressed = false;
      current.on("data", (response) => {
        if (call === current && !finished) receive(response);
      });
      current.on("error", (error) => {
        if (call === current) lost(error);
      });
      current.on("end", () => {
        if (call !== current) return;
        const received = writer ? writer.secondsWritten : 0;
        finish(new Error(`server ended the stream after ${received} s of audio`));
      });
      if (token) {
        current.write({ setup: { resumeToken: token, resumeFromSequence: nextSequence } });
      } else {
        current.write({ setup: { model, encoding: "PCM_S16LE" } });
        if (prompts.length) current.write({ prompts: { prompts } });
        if (config) current.write({ config });
        current.write({ playback: { action: "PLAY" } });
      }
      previous?.cancel(); // after a RECONNECT: the new stream is open, the old one may go
    };

    const lost = (error) => {
      call = null; // what else this stream says (its end) is over
      if (progressed) attempts = 0;
      if (!token || !RESUMABLE_CODES.has(error.code) || attempts >= retry.maxAttempts) {
        return finish(error);
      }
      const delayMs = backoffDelayMs(attempts, retry);
      attempts += 1;
      reconnects += 1;
      onNotice(`stream lost (${grpc.status[error.code]}); resuming at chunk ${nextSequence} ` +
               `in ${(delayMs / 1000).toFixed(1)} s`);
      Promise.resolve(wait(delayMs)).then(open, finish);
    };

    const receive = (response) => {
      if (response.started) {
        started(response.started);
      } else if (response.chunk) {
        write(response.chunk);
      } else {
        onMessage(response);
        const warning = response.warning;
        if (warning?.code === "RECONNECT" && (warning.resumeToken || token)) {
          token = warning.resumeToken || token;
          reconnects += 1;
          attempts = 0;
          onNotice(`gateway asked the client to move; resuming at chunk ${nextSequence}`);
          open();
        }
      }
    };

    const started = (message) => {
      if (message.encoding !== "PCM_S16LE") {
        return finish(new Error(`server chose encoding ${message.encoding}, expected PCM_S16LE`));
      }
      token = message.resumeToken || token;
      if (message.resumed) {
        onNotice(`session ${message.sessionId} resumed at chunk ${nextSequence}`);
      } else {
        format = message;
        sessionId = message.sessionId;
      }
    };

    const write = (chunk) => {
      if (!format) return finish(new Error("server sent audio before 'started'"));
      if (chunk.sequence < nextSequence) return; // written already (asked for again): no repeat
      if (chunk.sequence !== nextSequence) {
        onNotice(`chunk sequence ${chunk.sequence} where ${nextSequence} was expected`);
      }
      writer ??= new WavWriter(out, { sampleRateHz: format.sampleRate, channels: format.channels });
      writer.writePcmS16le(chunk.data);
      nextSequence = chunk.sequence + 1;
      chunks += 1;
      progressed = true;
      if (writer.secondsWritten >= seconds - SECONDS_TOLERANCE) {
        finish(null, { sessionId, chunks, seconds: writer.secondsWritten, reconnects });
      }
    };

    open();
  });
}
