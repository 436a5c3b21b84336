// streamToWav's reconnection, against a scripted in-process stand-in for the gateway's stream
// (no cluster needed): what it resends, what it drops, when it waits and when it gives up.
// tests/integration/test_resume.py runs the same client against real gateways.
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import grpc from "@grpc/grpc-js";

import { RECONNECT_DEFAULTS, backoffDelayMs, streamToWav } from "../lib/client.mjs";

const FRAME_BYTES = 4; // one stereo int16 frame: with 1 Hz audio, one chunk is one second

class ScriptedCall extends EventEmitter {
  constructor(log) {
    super();
    this.log = log;
    this.sent = [];
  }

  write(request) {
    this.sent.push(request);
  }

  cancel() {
    this.log.push(`cancel ${this.index}`);
    this.emit("error", Object.assign(new Error("Cancelled"), { code: grpc.status.CANCELLED }));
  }

  started(fields = {}) {
    this.emit("data", { started: { sessionId: "s-1", encoding: "PCM_S16LE", sampleRate: 1,
                                   channels: 2, resumeToken: "token-1", ...fields } });
  }

  chunk(sequence) {
    this.emit("data", { chunk: { sequence, data: chunkData(sequence) } });
  }

  fail(code) {
    this.emit("error", Object.assign(new Error(grpc.status[code]), { code }));
  }
}

/** A client whose stream() hands out ScriptedCalls; `call(n)` waits for the n-th to open. */
function scriptedClient() {
  const log = [];
  const calls = [];
  const waiters = [];
  const client = {
    stream() {
      const call = new ScriptedCall(log);
      call.index = calls.length;
      log.push(`open ${call.index}`);
      calls.push(call);
      waiters.splice(0).forEach((wake) => wake());
      return call;
    },
  };
  const call = async (index) => {
    while (calls.length <= index) await new Promise((wake) => waiters.push(wake));
    return calls[index];
  };
  return { connection: { client, metadata: new grpc.Metadata() }, calls, call, log };
}

function chunkData(sequence) {
  return Buffer.alloc(FRAME_BYTES, sequence + 1);
}

function recording(connection, { seconds, delays = [], ...options }) {
  const out = join(mkdtempSync(join(tmpdir(), "mrt-node-")), "out.wav");
  const notices = [];
  const done = streamToWav(connection, {
    seconds, out, onNotice: (text) => notices.push(text),
    ...options, reconnect: { ...options.reconnect, sleep: async (ms) => delays.push(ms) },
  });
  return { out, notices, done };
}

function writtenChunks(out) {
  const data = readFileSync(out).subarray(44);
  return Array.from({ length: data.length / FRAME_BYTES }, (_, i) => data[i * FRAME_BYTES] - 1);
}

test("the backoff doubles from the first delay up to the cap", () => {
  const delays = Array.from({ length: 7 }, (_, failures) => backoffDelayMs(failures));
  assert.deepEqual(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
  assert.equal(backoffDelayMs(3, { initialBackoffMs: 10, maxBackoffMs: 50 }), 50);
  assert.equal(RECONNECT_DEFAULTS.maxAttempts, 10);
});

test("a lost stream resumes from the first chunk not written, and repeats are dropped", async () => {
  const { connection, call } = scriptedClient();
  const delays = [];
  const { out, done } = recording(connection, { seconds: 4, delays });
  const first = await call(0);
  first.started();
  first.chunk(0);
  first.chunk(1);
  first.fail(grpc.status.UNAVAILABLE);
  const second = await call(1);
  assert.deepEqual(second.sent, [{ setup: { resumeToken: "token-1", resumeFromSequence: 2 } }]);
  second.started({ resumed: true, resumeToken: "" });
  second.chunk(1); // sent again: already written
  second.chunk(2);
  second.chunk(3);
  const summary = await done;
  assert.deepEqual(summary, { sessionId: "s-1", chunks: 4, seconds: 4, reconnects: 1 });
  assert.deepEqual(writtenChunks(out), [0, 1, 2, 3]);
  assert.deepEqual(delays, [100]);
});

test("RECONNECT opens the new stream first, then cancels the old one", async () => {
  const { connection, call, log } = scriptedClient();
  const delays = [];
  const { out, done } = recording(connection, { seconds: 3, delays });
  const first = await call(0);
  first.started();
  first.chunk(0);
  first.emit("data", { warning: { code: "RECONNECT", message: "draining", resumeToken: "token-2" } });
  const second = await call(1);
  assert.deepEqual(log, ["open 0", "open 1", "cancel 0"]);
  assert.deepEqual(second.sent, [{ setup: { resumeToken: "token-2", resumeFromSequence: 1 } }]);
  first.chunk(1); // the old stream's late chunk is not written
  second.started({ resumed: true });
  second.chunk(1);
  second.chunk(2);
  assert.equal((await done).reconnects, 1);
  assert.deepEqual(writtenChunks(out), [0, 1, 2]);
  assert.deepEqual(delays, []); // no wait: the old stream still plays meanwhile
});

test("an unknown or expired token (NOT_FOUND) is final", async () => {
  const { connection, call, calls } = scriptedClient();
  const { out, done } = recording(connection, { seconds: 4 });
  const first = await call(0);
  first.started();
  first.chunk(0);
  first.fail(grpc.status.UNAVAILABLE);
  (await call(1)).fail(grpc.status.NOT_FOUND);
  await assert.rejects(done, { code: grpc.status.NOT_FOUND });
  assert.equal(calls.length, 2);
  assert.deepEqual(writtenChunks(out), [0]); // what came before stays in the file
});

test("a loss before any resume token is final", async () => {
  const { connection, call, calls } = scriptedClient();
  const { done } = recording(connection, { seconds: 4 });
  (await call(0)).fail(grpc.status.UNAVAILABLE);
  await assert.rejects(done, { code: grpc.status.UNAVAILABLE });
  assert.equal(calls.length, 1);
});

test("maxAttempts resumes in a row without audio end the recording", async () => {
  const { connection, call, calls } = scriptedClient();
  const delays = [];
  const { done } = recording(connection, { seconds: 4, delays, reconnect: { maxAttempts: 3 } });
  const first = await call(0);
  first.started();
  first.chunk(0);
  first.fail(grpc.status.UNAVAILABLE); // brought audio: the count starts afresh
  for (let index = 1; index <= 3; index += 1) (await call(index)).fail(grpc.status.UNAVAILABLE);
  await assert.rejects(done, { code: grpc.status.UNAVAILABLE });
  assert.equal(calls.length, 4);
  assert.deepEqual(delays, [100, 200, 400]);
});

test("bad reconnect options are refused", async () => {
  const { connection } = scriptedClient();
  await assert.rejects(recording(connection, { seconds: 1, reconnect: { maxAttempts: -1 } }).done,
                       /reconnect.maxAttempts must be an integer >= 0/);
});
