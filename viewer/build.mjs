// Bundle the viewer into app/static/viewer/ (index.html, viewer.js, viewer.css): the server ships the built
// files and needs no node at run time. Run: npm ci && npm run build
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'app', 'static', 'viewer');
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

// niivue reads OME-Zarr through zarrita, whose blosc/lz4/zstd codecs (1.3 MB of inlined WebAssembly) load
// only for compressed Zarr stores. The viewer opens NIfTI, NRRD, MHA and npz files, so those codecs are left
// out: importing one fails with a clear message instead of shipping them.
const withoutZarrCodecs = {
  name: 'without-zarr-codecs',
  setup(b) {
    b.onResolve({ filter: /^numcodecs\// }, (args) => ({ path: args.path, namespace: 'left-out' }));
    b.onLoad({ filter: /.*/, namespace: 'left-out' }, (args) => ({
      contents: `export default { fromConfig() { throw new Error(${JSON.stringify(`${args.path} is not bundled`)}); } };`,
    }));
  },
};

await build({
  plugins: [withoutZarrCodecs],
  entryPoints: [join(here, 'src', 'main.js')],
  outfile: join(out, 'viewer.js'),
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2020'],
  legalComments: 'linked', // licences of the bundled libraries in viewer.js.LEGAL.txt
  logLevel: 'info',
});
copyFileSync(join(here, 'index.html'), join(out, 'index.html'));
copyFileSync(join(here, 'style.css'), join(out, 'viewer.css'));
