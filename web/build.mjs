// Builds web/dist: the app bundled by esbuild under assets/ with content hashes, the
// Rust crypto's wasm where the bundle looks for it (assets/pkg/, next to the bundle's
// import.meta.url), and index.html naming the hashed files. Nothing is fetched at run
// time from anywhere but this server.
//
//   node build.mjs            (run by `make web`, and by `make run` when dist is stale)

import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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

// The manifest and icon, as they are.
for (const file of readdirSync(join(here, "public"))) copyFileSync(join(here, "public", file), join(dist, file));

// The service worker at /sw.js (its scope is the whole site), told which files make the
// shell; their hashed names make its version, so a new build replaces the old cache.
const shell = ["/index.html", `/assets/${script}`, `/assets/${style}`, "/assets/pkg/matrix_sdk_crypto_wasm_bg.wasm",
    ...readdirSync(join(here, "public")).map((f) => `/${f}`)];
await build({
    entryPoints: [join(here, "src", "sw.ts")],
    outfile: join(dist, "sw.js"),
    bundle: true,
    format: "iife",
    platform: "browser",
    target: "chrome120",
    minify: true,
    logLevel: "error",
    define: { SHELL_FILES: JSON.stringify(shell), SHELL_VERSION: JSON.stringify(`${script}-${style}`) },
});
console.log(`web/dist: ${script}, ${style}, the crypto wasm, index.html, sw.js, the manifest`);
