// Bundle the editor into ../static (or --outdir DIR). Deterministic: same inputs,
// same bytes (no timestamps, no source maps with absolute paths, sorted copies).
//
//   node build.mjs                 -> ../static
//   node build.mjs --outdir /tmp/x -> /tmp/x (used by the freshness test)
//   node build.mjs --watch         -> rebuild ../static on change

import * as esbuild from "esbuild";
import { cp, mkdir, readdir, rm } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
let outdir = resolve(here, "..", "static");
let watch = false;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--outdir") outdir = resolve(process.cwd(), args[++i]);
  else if (args[i].startsWith("--outdir=")) outdir = resolve(process.cwd(), args[i].slice(9));
  else if (args[i] === "--watch") watch = true;
  else {
    console.error(`unknown argument: ${args[i]}`);
    process.exit(2);
  }
}

const options = {
  absWorkingDir: here,
  entryPoints: { app: "src/main.js" },
  bundle: true,
  format: "esm",
  target: ["es2020", "chrome90", "firefox90", "safari15"],
  minify: true,
  sourcemap: false,
  legalComments: "eof",
  charset: "utf8",
  outdir,
  logLevel: "warning",
  metafile: true,
  splitting: true,
  chunkNames: "chunks/[name]-[hash]",
};

async function copyPublic() {
  const pub = join(here, "public");
  const names = (await readdir(pub)).sort();
  for (const name of names) await cp(join(pub, name), join(outdir, name), { recursive: true });
}

await mkdir(outdir, { recursive: true });
// Remove only files this build writes, so nothing stale survives a rename.
for (const name of ["app.js", "app.css", "chunks"]) await rm(join(outdir, name), { recursive: true, force: true });

if (watch) {
  const ctx = await esbuild.context(options);
  await copyPublic();
  await ctx.watch();
  console.log(`watching; writing to ${outdir}`);
} else {
  const result = await esbuild.build(options);
  await copyPublic();
  const outputs = Object.entries(result.metafile.outputs)
    .map(([file, info]) => `${file.split("/").slice(-2).join("/")} ${(info.bytes / 1024).toFixed(1)} KiB`)
    .sort();
  console.log(`built into ${outdir}: ${outputs.join(", ")}`);
}
