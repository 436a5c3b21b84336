// The player page in Debian's headless Chromium (driven by playwright-core; no browser is
// downloaded): MRT_PLAYER_URL (the web service), MRT_API_KEY, MRT_OUT_DIR (an audio prompt file
// and the screenshot player.png).
// tests/integration/test_web.py starts the cluster and runs this file with `node --test`.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { chromium } from "playwright-core";

import { WavWriter } from "../../clients/node/lib/wav.mjs";

const { MRT_PLAYER_URL, MRT_API_KEY, MRT_OUT_DIR } = process.env;
const CHROMIUM = process.env.MRT_CHROMIUM ?? "/usr/bin/chromium";
const CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync"];

/** A 1 s 440 Hz stereo tone as a WAV file: the audio-file prompt. */
function writeTone(path) {
  const rateHz = 48000;
  const samples = Buffer.alloc(rateHz * 2 * 2);
  for (let i = 0; i < rateHz; i++) {
    const value = Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / rateHz));
    samples.writeInt16LE(value, 4 * i);
    samples.writeInt16LE(value, 4 * i + 2);
  }
  const wav = new WavWriter(path, { sampleRateHz: rateHz, channels: 2 });
  wav.writePcmS16le(samples);
  wav.close();
}

test("the player plays chunks, and slider moves and an audio prompt reach the session", async () => {
  const profile = mkdtempSync(join(tmpdir(), "mrt-chromium-"));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS,
    viewport: { width: 1100, height: 820 },
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("console", (message) => {
      if (message.type() === "error") errors.push(message.text());
    });
    page.on("pageerror", (error) => errors.push(String(error)));
    page.on("response", (response) => {
      if (response.status() >= 400) errors.push(`${response.status()} ${response.url()}`);
    });
    await page.goto(`${MRT_PLAYER_URL}?key=${encodeURIComponent(MRT_API_KEY)}`);
    await page.click("#play");
    await page.waitForFunction(() => window.mrtPlayer.chunks >= 2, null, { timeout: 90_000 });
    const playing = await page.evaluate(() => ({
      scheduled: window.mrtPlayer.scheduled,
      aheadS: window.mrtPlayer.nextStartS - window.mrtPlayer.audio.currentTime,
      state: window.mrtPlayer.audio.state,
      status: document.getElementById("status").textContent,
    }));
    assert.ok(playing.scheduled >= 2, `scheduled ${playing.scheduled} chunks`);
    assert.ok(playing.aheadS > 0, "audio is queued ahead of the playhead");
    assert.equal(playing.state, "running");
    assert.equal(playing.status, "connected");

    await page.locator("#temperature").fill("2.5");
    await page.waitForFunction(
      () => window.mrtPlayer.lastSourceMetadata?.musicGenerationConfig?.temperature === 2.5,
      null, { timeout: 60_000 });
    assert.match(await page.textContent("#now-playing"), /temperature 2\.5/);

    const tone = join(MRT_OUT_DIR, "tone.wav");
    writeTone(tone);
    await page.setInputFiles("#audio-prompt", tone);
    await page.locator(".prompt-weight").first().fill("0.5");
    await page.waitForFunction(() => {
      const prompts = window.mrtPlayer.lastSourceMetadata?.clientContent?.weightedPrompts ?? [];
      return prompts.map((p) => p.text).join() === "synthwave,dreamy piano,tone.wav" &&
        Math.abs(prompts[0].weight - 0.25) < 1e-6; // 0.5 / (0.5 + 0.5 + 1), normalized
    }, null, { timeout: 60_000 });
    await page.waitForFunction(
      () => Number(document.getElementById("buffer-seconds").textContent) > 0, null,
      { timeout: 10_000 });
    await page.screenshot({ path: join(MRT_OUT_DIR, "player.png") });

    await page.click("#pause");
    await page.waitForFunction(() => window.mrtPlayer.audio.state === "suspended");
    await page.click("#stop");
    assert.equal(await page.evaluate(() => window.mrtPlayer.sources.size), 0);
    const chunksBefore = await page.evaluate(() => window.mrtPlayer.chunks);
    await page.click("#play"); // after Stop, Play starts afresh on the same connection
    await page.waitForFunction((before) => window.mrtPlayer.chunks > before &&
      window.mrtPlayer.audio.state === "running", chunksBefore, { timeout: 60_000 });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
