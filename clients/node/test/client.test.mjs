// Runs against a live cluster: MRT_ADDRESS (gateway), MRT_API_KEY, MRT_TLS_CA, MRT_OUT_DIR.
// tests/integration/test_web.py starts one and runs this file with `node --test`.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { connect, listModels } from "../lib/client.mjs";
import { splitWeight } from "../lib/cli.mjs";

const CLI = fileURLToPath(new URL("../bin/mrt-stream.mjs", import.meta.url));
const { MRT_ADDRESS, MRT_API_KEY, MRT_TLS_CA, MRT_OUT_DIR } = process.env;
const BYTES_PER_CHUNK = 2 * 48000 * 2 * 2; // 2 s of 48 kHz stereo int16

function runCli(args, env = {}) {
  return promisify(execFile)(process.execPath, [CLI, ...args], {
    env: { ...process.env, MRT_ADDRESS, MRT_TLS_CA, ...env }, timeout: 120_000,
  }).then(({ stderr }) => ({ code: 0, stderr }), (error) => ({ code: error.code, stderr: error.stderr }));
}

test("prompt specs split their weight off only when it is a number", () => {
  assert.deepEqual(splitWeight("disco:0.7"), ["disco", 0.7]);
  assert.deepEqual(splitWeight("live at 5:30 am"), ["live at 5:30 am", undefined]);
  assert.deepEqual(splitWeight("jazz"), ["jazz", undefined]);
  assert.throws(() => splitWeight("funk:-1"), /finite number >= 0/);
});

test("the CLI records weighted prompts into a 48 kHz stereo WAV over TLS", async () => {
  const out = join(MRT_OUT_DIR, "node-mix.wav");
  const { code, stderr } = await runCli(["--prompt", "disco:0.7", "--prompt", "funk:0.3",
                                         "--temperature", "1.0", "--top-k", "30",
                                         "--seconds", "3", "--out", out],
                                        { MRT_API_KEY });
  assert.equal(code, 0, stderr);
  assert.match(stderr, /wrote 4\.00 s \(2 chunks\)/);
  const wav = readFileSync(out);
  assert.equal(wav.toString("ascii", 0, 4), "RIFF");
  assert.equal(wav.readUInt16LE(22), 2); // channels
  assert.equal(wav.readUInt32LE(24), 48000); // sample rate
  assert.equal(wav.readUInt32LE(40), 2 * BYTES_PER_CHUNK); // 3 s rounded up to whole chunks
  assert.equal(wav.length, 44 + 2 * BYTES_PER_CHUNK);
  const samples = new Int16Array(wav.buffer, wav.byteOffset + 44, (wav.length - 44) / 2);
  assert.ok(samples.some((s) => Math.abs(s) > 300), "the audio is not silence");
});

test("ListModels names the cluster's model", async () => {
  const connection = connect({ address: MRT_ADDRESS, apiKey: MRT_API_KEY, tlsCa: MRT_TLS_CA });
  try {
    const reply = await listModels(connection);
    assert.ok(reply.models.some((model) => model.name === "mock" && model.loaded));
  } finally {
    connection.client.close();
  }
});

test("a call without the API key fails with UNAUTHENTICATED", async () => {
  const out = join(MRT_OUT_DIR, "refused.wav");
  const { code, stderr } = await runCli(["--prompt", "jazz", "--seconds", "2", "--out", out],
                                        { MRT_API_KEY: "" });
  assert.equal(code, 1);
  assert.match(stderr, /UNAUTHENTICATED/);
});
