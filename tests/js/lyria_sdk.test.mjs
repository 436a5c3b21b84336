// The official Lyria RealTime JavaScript SDK (@google/genai) against the web service:
// MRT_WEB_URL (https; NODE_EXTRA_CA_CERTS trusts its test CA) and MRT_API_KEY.
// tests/integration/test_web.py starts the cluster and runs this file with `node --test`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { GoogleGenAI } from "@google/genai";

const { MRT_WEB_URL, MRT_API_KEY } = process.env;
const FRAMES_PER_CHUNK = 96000;

/** Collects server messages; `next(predicate)` waits for the next one that matches. */
class Inbox {
  constructor() {
    this.messages = [];
    this.waiters = [];
    this.closed = null;
  }

  push(message) {
    this.messages.push(message);
    this.waiters = this.waiters.filter(({ predicate, resolve }) => {
      if (!predicate(message)) return true;
      resolve(message);
      return false;
    });
  }

  close(event) {
    this.closed = event;
    for (const { reject } of this.waiters) reject(new Error(`socket closed: ${event.code} ${event.reason}`));
    this.waiters = [];
  }

  next(predicate, timeoutMs = 60_000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("timed out waiting for a message")), timeoutMs);
      this.waiters.push({ predicate, resolve: (m) => { clearTimeout(timer); resolve(m); },
                          reject: (e) => { clearTimeout(timer); reject(e); } });
    });
  }
}

const isChunk = (message) => Boolean(message.audioChunk);

async function chunks(inbox, count) {
  const received = [];
  while (received.length < count) received.push((await inbox.next(isChunk)).audioChunk);
  return received;
}

test("the JS SDK runs the Lyria flow: prompts, config, play, pause, play, reset, stop", async () => {
  const ai = new GoogleGenAI({ apiKey: MRT_API_KEY,
                               httpOptions: { baseUrl: MRT_WEB_URL, apiVersion: "v1alpha" } });
  const inbox = new Inbox();
  const setupComplete = inbox.next((message) => Boolean(message.setupComplete));
  const session = await ai.live.music.connect({
    model: "models/lyria-realtime-exp",
    callbacks: { onmessage: (message) => inbox.push(message), onerror: () => {},
                 onclose: (event) => inbox.close(event) },
  });
  await setupComplete;
  await session.setWeightedPrompts({ weightedPrompts: [{ text: "ambient pads", weight: 2 },
                                                       { text: "glitch", weight: 2 }] });
  const warning = inbox.next((message) => Boolean(message.warning));
  await session.setMusicGenerationConfig({ musicGenerationConfig: {
    temperature: 1.2, topK: 50, guidance: 3.5, density: 0.4, onlyBassAndDrums: true } });
  assert.match((await warning).warning, /density, onlyBassAndDrums/);
  session.play();
  const first = await chunks(inbox, 3);
  session.pause();
  session.play();
  const resumed = await chunks(inbox, 1);
  session.resetContext();
  const afterReset = await chunks(inbox, 1);
  session.stop();
  session.close();

  const all = [...first, ...resumed, ...afterReset];
  for (const chunk of all) {
    assert.equal(chunk.mimeType, "audio/l16;rate=48000;channels=2");
    assert.equal(Buffer.from(chunk.data, "base64").length, FRAMES_PER_CHUNK * 2 * 2);
  }
  const metadata = all.at(-1).sourceMetadata;
  assert.equal(metadata.musicGenerationConfig.temperature, 1.2);
  assert.deepEqual(metadata.clientContent.weightedPrompts.map((p) => p.weight), [0.5, 0.5]);
});

test("a wrong key closes the socket with 1008 and the reason", async () => {
  const ai = new GoogleGenAI({ apiKey: "wrong-key-0000000000000",
                               httpOptions: { baseUrl: MRT_WEB_URL, apiVersion: "v1alpha" } });
  const closed = new Promise((resolve) => {
    ai.live.music.connect({ model: "models/lyria-realtime-exp",
                            callbacks: { onmessage: () => {}, onclose: resolve } });
  });
  const event = await closed;
  assert.equal(event.code, 1008);
  assert.match(event.reason, /UNAUTHENTICATED/);
});
