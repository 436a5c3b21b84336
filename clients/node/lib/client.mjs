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

/**
 * A client for the gateway at `address` ("host:port"): plaintext, or TLS trusting the PEM CA
 * file `tlsCa` (and presenting `tlsCert` / `tlsKey` to a gateway that requires client
 * certificates). Calls carry `authorization: Bearer <apiKey>` when a key is given.
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
  const client = new MusicGeneration(address, credentials);
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

/**
 * Records `seconds` of a new session (rounded up to whole chunks) into a WAV file: sends
 * setup, the prompts ([{text, weight}] or [{audio: Buffer, weight}]), the config (if any) and
 * PLAY, and writes chunks as they come. `onMessage` sees every other response (prompt status,
 * warnings). Resolves to {sessionId, chunks, seconds}; rejects with the gRPC error or when the
 * server ends the stream early.
 */
export function streamToWav({ client, metadata }, { seconds, out, prompts = [], config, model = "",
                                                   onMessage = () => {} }) {
  return new Promise((resolve, reject) => {
    const call = client.stream(metadata);
    let writer = null;
    let started = null;
    let chunks = 0;
    let finished = false;
    const finish = (error, value) => {
      if (finished) return;
      finished = true;
      if (writer) writer.close();
      call.cancel();
      if (error) reject(error);
      else resolve(value);
    };
    call.on("data", (response) => {
      if (response.started) {
        started = response.started;
        if (started.encoding !== "PCM_S16LE") {
          finish(new Error(`server chose encoding ${started.encoding}, expected PCM_S16LE`));
        }
      } else if (response.chunk) {
        if (!started) return finish(new Error("server sent audio before 'started'"));
        writer ??= new WavWriter(out, { sampleRateHz: started.sampleRate,
                                        channels: started.channels });
        writer.writePcmS16le(response.chunk.data);
        chunks += 1;
        if (writer.secondsWritten >= seconds - 1e-6) {
          finish(null, { sessionId: started.sessionId, chunks, seconds: writer.secondsWritten });
        }
      } else {
        onMessage(response);
      }
    });
    call.on("error", (error) => finish(error));
    call.on("end", () => finish(new Error(
      `server ended the stream after ${writer ? writer.secondsWritten : 0} s of audio`)));
    call.write({ setup: { model, encoding: "PCM_S16LE" } });
    if (prompts.length) call.write({ prompts: { prompts } });
    if (config) call.write({ config });
    call.write({ playback: { action: "PLAY" } });
  });
}
