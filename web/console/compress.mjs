// After `vite build`: a gzip and a brotli copy of each built script and
// stylesheet, which agentd sends to browsers that accept them (ServeDir's
// precompressed files), so a page load moves ~50 KB instead of ~160 KB.
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const dir = new URL("./dist/assets/", import.meta.url).pathname;
for (const name of readdirSync(dir)) {
  if (!/\.(js|css)$/.test(name)) continue;
  const data = readFileSync(join(dir, name));
  writeFileSync(join(dir, `${name}.gz`), gzipSync(data, { level: 9 }));
  writeFileSync(
    join(dir, `${name}.br`),
    brotliCompressSync(data, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }),
  );
}
