import { defineConfig } from "vite";

// Node's, when Vite loads this file (no @types/node for one variable).
declare const process: { env: Record<string, string | undefined> };

// Served by agentd under /console/ (src/console.rs): hashed files in assets/
// get immutable cache headers there, index.html is revalidated. `npm run dev`
// proxies the gRPC-Web calls to Envoy (AGENTD_URL, default localhost:5000).
export default defineConfig({
  base: "/console/",
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
  },
  server: {
    proxy: {
      "^/agentd\\.": { target: process.env.AGENTD_URL ?? "http://localhost:5000", changeOrigin: true },
    },
  },
});
