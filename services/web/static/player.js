// Magenta RT browser player: the Lyria RealTime WebSocket protocol, played through WebAudio.
//
// Chunks (2 s of 16-bit 48 kHz stereo PCM) are scheduled back to back on the AudioContext's
// clock, JITTER_S behind their arrival at the start, so small delays in delivery go unheard.
// A chunk that arrives after the previous one has finished playing is an underrun: playback
// restarts JITTER_S later. `window.mrtPlayer` holds the live numbers (the tests read them).
"use strict";

const LYRIA_PATH = "ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateMusic";
const MODEL = "models/lyria-realtime-exp"; // any name: the cluster's default model answers
const SAMPLE_RATE_HZ = 48000;
const CHANNELS = 2;
const JITTER_S = 0.25;
const SEND_DELAY_MS = 150; // slider moves within this time are sent as one update
const DEFAULT_PROMPTS = [["synthwave", 1.0], ["dreamy piano", 0.5]];

const $ = (id) => document.getElementById(id);

const player = {
  socket: null,
  ready: false,        // setupComplete received
  audio: null,         // AudioContext, made on the first Play (browsers need a gesture)
  analyser: null,
  sources: new Set(),  // scheduled AudioBufferSourceNodes
  nextStartS: 0,       // where the next chunk starts on the audio clock; 0: nothing queued
  chunks: 0,           // chunks received
  scheduled: 0,        // chunks scheduled for playback
  underruns: 0,
  lastSourceMetadata: null, // what the last chunk was generated with
  messages: [],        // warnings and filtered prompts, as received
};
window.mrtPlayer = player;

// ---- prompts and settings -------------------------------------------------------------------

function addPromptRow({ text = "", audio = null, weight = 1.0 }) {
  const row = $("prompt-row").content.firstElementChild.cloneNode(true);
  const textInput = row.querySelector(".prompt-text");
  const weightInput = row.querySelector(".prompt-weight");
  const weightValue = row.querySelector(".prompt-weight-value");
  textInput.value = audio ? `audio file: ${audio.name}` : text;
  textInput.disabled = Boolean(audio);
  row.audio = audio;
  weightInput.value = weight;
  weightValue.textContent = Number(weight).toFixed(2);
  textInput.addEventListener("change", schedulePromptUpdate);
  weightInput.addEventListener("input", () => {
    weightValue.textContent = Number(weightInput.value).toFixed(2);
    schedulePromptUpdate();
  });
  row.querySelector(".remove").addEventListener("click", () => {
    row.remove();
    schedulePromptUpdate();
  });
  $("prompts").appendChild(row);
}

function weightedPrompts() {
  const prompts = [];
  for (const row of $("prompts").children) {
    const weight = Number(row.querySelector(".prompt-weight").value);
    if (row.audio) {
      prompts.push({ audio: { data: row.audio.data, name: row.audio.name }, weight });
    } else {
      const text = row.querySelector(".prompt-text").value.trim();
      if (text) prompts.push({ text, weight });
    }
  }
  return prompts;
}

function musicGenerationConfig() {
  return {
    temperature: Number($("temperature").value),
    topK: Number($("top-k").value),
    guidance: Number($("guidance").value),
  };
}

function debounce(send) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(send, SEND_DELAY_MS);
  };
}

const schedulePromptUpdate = debounce(sendPrompts);
const scheduleConfigUpdate = debounce(sendConfig);

function sendPrompts() {
  const prompts = weightedPrompts();
  if (prompts.length) send({ clientContent: { weightedPrompts: prompts } });
  else log("no prompts: add one to steer the music");
}

function sendConfig() {
  send({ musicGenerationConfig: musicGenerationConfig() });
}

// ---- the WebSocket --------------------------------------------------------------------------

function send(message) {
  if (player.socket && player.ready) player.socket.send(JSON.stringify(message));
}

function setStatus(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function log(text) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $("log").prepend(item);
}

function connect() {
  return new Promise((resolve, reject) => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const key = $("api-key").value.trim();
    const url = new URL(LYRIA_PATH, `${scheme}://${location.host}${location.pathname}`);
    if (key) url.searchParams.set("key", key);
    const socket = new WebSocket(url);
    player.socket = socket;
    setStatus("connecting…", "idle");
    socket.onopen = () => socket.send(JSON.stringify({ setup: { model: MODEL } }));
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.setupComplete) {
        player.ready = true;
        setStatus("connected", "connected");
        sendPrompts();
        sendConfig();
        resolve();
      } else if (message.serverContent) {
        for (const chunk of message.serverContent.audioChunks || []) playChunk(chunk);
      } else if (message.filteredPrompt) {
        player.messages.push(message);
        log(`prompt "${message.filteredPrompt.text}" refused: ${message.filteredPrompt.filteredReason}`);
      } else if (message.warning) {
        player.messages.push(message);
        log(`warning: ${message.warning}`);
      }
    };
    socket.onclose = (event) => {
      const wasReady = player.ready;
      player.socket = null;
      player.ready = false;
      const reason = event.reason ? `: ${event.reason}` : "";
      setStatus(`closed (${event.code}${reason})`, event.code === 1000 ? "idle" : "error");
      if (event.code !== 1000) log(`connection closed with ${event.code}${reason}`);
      if (!wasReady) reject(new Error(`closed before setup: ${event.code}${reason}`));
    };
  });
}

// ---- audio ----------------------------------------------------------------------------------

function ensureAudio() {
  if (player.audio) return;
  player.audio = new AudioContext({ sampleRate: SAMPLE_RATE_HZ });
  player.analyser = player.audio.createAnalyser();
  player.analyser.fftSize = 2048;
  player.analyser.connect(player.audio.destination);
  requestAnimationFrame(drawMeters);
}

function decodePcm(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const samples = new Int16Array(bytes.buffer, 0, bytes.byteLength >> 1);
  const frames = samples.length / CHANNELS;
  const buffer = player.audio.createBuffer(CHANNELS, frames, SAMPLE_RATE_HZ);
  for (let channel = 0; channel < CHANNELS; channel++) {
    const out = buffer.getChannelData(channel);
    for (let i = 0; i < frames; i++) out[i] = samples[i * CHANNELS + channel] / 32768;
  }
  return buffer;
}

function playChunk(chunk) {
  player.chunks += 1;
  $("chunks").textContent = player.chunks;
  if (chunk.sourceMetadata) {
    player.lastSourceMetadata = chunk.sourceMetadata;
    $("now-playing").textContent = describe(chunk.sourceMetadata);
  }
  const buffer = decodePcm(chunk.data);
  const now = player.audio.currentTime;
  if (player.nextStartS === 0) {
    player.nextStartS = now + JITTER_S;
  } else if (player.nextStartS < now) {
    player.underruns += 1; // the previous chunk ran out before this one came
    $("underruns").textContent = player.underruns;
    player.nextStartS = now + JITTER_S;
  }
  const source = player.audio.createBufferSource();
  source.buffer = buffer;
  source.connect(player.analyser);
  source.onended = () => player.sources.delete(source);
  source.start(player.nextStartS);
  player.sources.add(source);
  player.nextStartS += buffer.duration;
  player.scheduled += 1;
}

function dropScheduledAudio() {
  for (const source of player.sources) source.stop();
  player.sources.clear();
  player.nextStartS = 0;
}

function describe(metadata) {
  const parts = [];
  const config = metadata.musicGenerationConfig;
  if (config) {
    parts.push(`temperature ${config.temperature ?? "default"}, top-k ${config.topK ?? "default"}, ` +
               `guidance ${config.guidance ?? "default"}`);
  }
  const prompts = metadata.clientContent && metadata.clientContent.weightedPrompts;
  if (prompts) parts.push(prompts.map((p) => `${p.text} ${p.weight.toFixed(2)}`).join(", "));
  return parts.join(" · ") || "–";
}

function drawMeters() {
  const { audio, analyser } = player;
  const canvas = $("spectrum");
  const context = canvas.getContext("2d");
  const bins = new Uint8Array(analyser.frequencyBinCount);
  analyser.getByteFrequencyData(bins);
  context.fillStyle = "#0f1115";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.fillStyle = "#6ad1a8";
  const bars = 128;
  const width = canvas.width / bars;
  for (let bar = 0; bar < bars; bar++) {
    // Logarithmic frequency axis: low bins get more bars, as ears hear it.
    const bin = Math.min(bins.length - 1, Math.floor(Math.pow(bins.length, bar / bars)));
    const height = (bins[bin] / 255) * canvas.height;
    context.fillRect(bar * width, canvas.height - height, width - 1, height);
  }
  const wave = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(wave);
  const rms = Math.sqrt(wave.reduce((sum, x) => sum + x * x, 0) / wave.length);
  $("level-bar").style.width = `${Math.min(100, rms * 300)}%`;
  const buffered = player.nextStartS ? Math.max(0, player.nextStartS - audio.currentTime) : 0;
  $("buffer-seconds").textContent = buffered.toFixed(2);
  $("buffer-meter").value = buffered;
  requestAnimationFrame(drawMeters);
}

// ---- transport ------------------------------------------------------------------------------

async function play() {
  ensureAudio();
  await player.audio.resume();
  if (!player.socket) {
    try {
      await connect();
    } catch (error) {
      log(error.message);
      return;
    }
  }
  send({ playbackControl: "PLAY" });
}

function pause() {
  send({ playbackControl: "PAUSE" });
  if (player.audio) player.audio.suspend(); // queued audio waits for the next Play
}

function stop() {
  send({ playbackControl: "STOP" });
  if (player.audio) dropScheduledAudio();
}

function resetContext() {
  send({ playbackControl: "RESET_CONTEXT" });
}

async function addAudioPrompt(file) {
  const dataUrl = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
  addPromptRow({ audio: { name: file.name, data: dataUrl.slice(dataUrl.indexOf(",") + 1) } });
  schedulePromptUpdate();
}

function bindSlider(id, format) {
  const input = $(id);
  const output = $(`${id}-value`);
  input.addEventListener("input", () => {
    output.textContent = format(Number(input.value));
    scheduleConfigUpdate();
  });
}

function init() {
  $("api-key").value = new URLSearchParams(location.search).get("key") || "";
  for (const [text, weight] of DEFAULT_PROMPTS) addPromptRow({ text, weight });
  $("add-prompt").addEventListener("click", () => addPromptRow({ text: "" }));
  $("audio-prompt").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) addAudioPrompt(file).catch((error) => log(`cannot read ${file.name}: ${error}`));
    event.target.value = "";
  });
  bindSlider("temperature", (v) => v.toFixed(2));
  bindSlider("top-k", (v) => String(v));
  bindSlider("guidance", (v) => v.toFixed(1));
  $("play").addEventListener("click", play);
  $("pause").addEventListener("click", pause);
  $("stop").addEventListener("click", stop);
  $("reset").addEventListener("click", resetContext);
}

init();
