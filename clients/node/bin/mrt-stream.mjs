#!/usr/bin/env node
// Stream music from the gateway into a WAV file: the Node.js twin of `mrt stream`.
//   node clients/node/bin/mrt-stream.mjs --prompt "disco:0.7" --prompt "funk:0.3" \
//        --seconds 10 --out mix.wav
import { main } from "../lib/cli.mjs";

process.exitCode = await main(process.argv.slice(2));
