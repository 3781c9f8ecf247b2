// Builds web/dist: the app bundled by esbuild under assets/ with content hashes, the
// Rust crypto's wasm where the bundle looks for it (assets/pkg/, next to the bundle's
// import.meta.url), and index.html naming the hashed files. Nothing is fetched at run
// time from anywhere but this server.
//
//   node build.mjs            (run by `make web`, and by `make run` when dist is stale)

import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");

rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, "assets", "pkg"), { recursive: true });

const result = await build({
    entryPoints: { app: join(here, "src", "main.ts") },
    outdir: dist,
    entryNames: "assets/[name]-[hash]",
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "chrome120",
    minify: true,
    sourcemap: "linked",
    metafile: true,
    logLevel: "error",
    define: { "process.env.NODE_ENV": '"production"', global: "globalThis" },
});

const outputs = Object.keys(result.metafile.outputs).map((file) => basename(file));
const script = outputs.find((f) => f.endsWith(".js"));
const style = outputs.find((f) => f.endsWith(".css"));
if (!script || !style) throw new Error(`esbuild produced no script or style: ${outputs}`);

const wasm = join(here, "node_modules", "@matrix-org", "matrix-sdk-crypto-wasm", "pkg", "matrix_sdk_crypto_wasm_bg.wasm");
copyFileSync(wasm, join(dist, "assets", "pkg", "matrix_sdk_crypto_wasm_bg.wasm"));

const page = readFileSync(join(here, "index.html"), "utf8")
    .replace("%SCRIPT%", `/assets/${script}`)
    .replace("%STYLE%", `/assets/${style}`);
writeFileSync(join(dist, "index.html"), page);
console.log(`web/dist: ${script}, ${style}, the crypto wasm, index.html`);
