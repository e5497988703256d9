import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const here = path.dirname(fileURLToPath(import.meta.url));

// `npm run dev -w @nqvm/web` proxies the API to a manager on NQVM_MANAGER (default 127.0.0.1:8080).
const manager = process.env.NQVM_MANAGER ?? 'http://127.0.0.1:8080';

export default defineConfig({
  root: here,
  base: '/',
  esbuild: { jsx: 'automatic' },
  build: {
    outDir: path.join(here, 'dist'),
    emptyOutDir: true,
    target: 'es2022',
    reportCompressedSize: true,
    chunkSizeWarningLimit: 700,
  },
  server: {
    proxy: { '/api': { target: manager, changeOrigin: false }, '/docs': manager, '/healthz': manager },
  },
});
