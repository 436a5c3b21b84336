// A 16-bit PCM WAV file written as chunks arrive; the header's sizes are filled in on close.
import { openSync, writeSync, closeSync } from "node:fs";

const HEADER_BYTES = 44;

export class WavWriter {
  constructor(path, { sampleRateHz, channels }) {
    this.fd = openSync(path, "w");
    this.sampleRateHz = sampleRateHz;
    this.channels = channels;
    this.dataBytes = 0;
    writeSync(this.fd, this.#header(), 0, HEADER_BYTES, 0);
  }

  get secondsWritten() {
    return this.dataBytes / (2 * this.channels * this.sampleRateHz);
  }

  /** Appends interleaved little-endian int16 samples. */
  writePcmS16le(buffer) {
    writeSync(this.fd, buffer, 0, buffer.length, HEADER_BYTES + this.dataBytes);
    this.dataBytes += buffer.length;
  }

  close() {
    writeSync(this.fd, this.#header(), 0, HEADER_BYTES, 0);
    closeSync(this.fd);
  }

  #header() {
    const header = Buffer.alloc(HEADER_BYTES);
    const blockAlign = 2 * this.channels;
    header.write("RIFF", 0, "ascii");
    header.writeUInt32LE(36 + this.dataBytes, 4);
    header.write("WAVEfmt ", 8, "ascii");
    header.writeUInt32LE(16, 16); // fmt chunk size
    header.writeUInt16LE(1, 20); // PCM
    header.writeUInt16LE(this.channels, 22);
    header.writeUInt32LE(this.sampleRateHz, 24);
    header.writeUInt32LE(this.sampleRateHz * blockAlign, 28);
    header.writeUInt16LE(blockAlign, 32);
    header.writeUInt16LE(16, 34); // bits per sample
    header.write("data", 36, "ascii");
    header.writeUInt32LE(this.dataBytes, 40);
    return header;
  }
}
