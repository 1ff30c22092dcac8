import { defineConfig } from "vite";

// Served by agentd under /console/ (src/console.rs): hashed files in assets/
// get immutable cache headers there, index.html is revalidated.
export default defineConfig({
  base: "/console/",
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
  },
});
