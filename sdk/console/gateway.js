// The real processes behind the console tests: the fake upstream and the `tollgate` binary (built
// by sdk/run-tests.sh, passed in TOLLGATE_TEST_BIN), each on 127.0.0.1 port 0, the gateway on a
// fresh data dir with SQLite. Also: reading the `.eml` files of the gateway's outbox.
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves once `predicate(text so far)` returns a value; rejects when the process exits. */
function waitFor(child, stream, predicate, what, timeoutMs = 30_000) {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => done(new Error(`${what}: timed out; output so far:\n${text}`)), timeoutMs);
    const onData = (chunk) => {
      text += chunk;
      const v = predicate(text);
      if (v !== undefined && v !== null) done(null, v);
    };
    const onExit = (code) => done(new Error(`${what}: exited with ${code}; output:\n${text}`));
    function done(err, v) {
      clearTimeout(timer);
      stream.off('data', onData);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve(v);
    }
    stream.setEncoding('utf8');
    stream.on('data', onData);
    child.on('exit', onExit);
  });
}

async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
}

/** `fake-upstream` on 127.0.0.1:0 (its first stdout line is `listening ADDR`). */
export async function startUpstream(bin) {
  const child = spawn(bin, ['--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const addr = await waitFor(child, child.stdout, (t) => /^listening (\S+)/m.exec(t)?.[1], 'fake-upstream');
  child.stdout.resume();
  return { addr, baseUrl: `http://${addr}/v1`, stop: () => stop(child) };
}

/**
 * Starts `tollgate serve` on 127.0.0.1:0. Without `dataDir` a fresh one is made (a first start:
 * the banner's bootstrap key and one-time console link are returned). `publicUrl` sets
 * TOLLGATE_PUBLIC_URL (a second instance behind the same public address as the first).
 */
export async function startGateway({ bin, upstream, dataDir, publicUrl }) {
  const fresh = !dataDir;
  const dir = dataDir ?? (await mkdtemp(join(tmpdir(), 'tollgate-console-')));
  const config = join(dir, 'tollgate.toml');
  if (fresh) {
    await writeFile(
      config,
      `[[providers]]\nname = "fake"\nkind = "openai"\nbase_url = "${upstream.baseUrl}"\n\n` +
        `[[models]]\nname = "fake-chat"\nprovider = "fake"\n`,
    );
  }
  // Only what this test sets: no TOLLGATE_* of the calling shell (a public URL, an SMTP server).
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TOLLGATE_')));
  Object.assign(env, {
    TOLLGATE_CONFIG: config,
    TOLLGATE_DATA_DIR: dir,
    TOLLGATE_DATABASE_URL: `sqlite://${dir}/tollgate.db`,
    TOLLGATE_LOG_JSON: 'true',
    RUST_LOG: 'warn,tollgate=info',
  });
  if (publicUrl) env.TOLLGATE_PUBLIC_URL = publicUrl;
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (c) => { stdout += c; });
  const addr = await waitFor(child, child.stderr, (t) => {
    for (const line of t.split('\n')) {
      try {
        const f = JSON.parse(line).fields ?? {};
        if (String(f.message).includes('listening') && f.addr) return f.addr;
      } catch { /* not a JSON line (yet) */ }
    }
    return undefined;
  }, 'tollgate serve');
  child.stderr.resume();
  await sleep(50); // the banner is written before the listener starts; let the pipe drain
  const url = `http://${addr}`;
  const ownerKey = /^ {4}([a-z0-9]+_[A-Za-z0-9]+)$/m.exec(stdout)?.[1];
  const consoleLink = /^ {4}(http\S+\/console\/link\?token=\S+)$/m.exec(stdout)?.[1];
  if (fresh && !(ownerKey && consoleLink)) {
    await stop(child);
    throw new Error(`no bootstrap key or console link printed:\n${stdout}`);
  }
  return {
    url,
    dataDir: dir,
    ownerKey,
    consoleLink,
    async stop() {
      await stop(child);
    },
    async remove() {
      await stop(child);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The link to `path` (e.g. `/console/verify`) in the newest message of the outbox sent to `to`;
 * waits for it to arrive. The file is read as a person would read it, undecoded: the gateway
 * sends its messages `7bit`, so a link is never broken by quoted-printable's soft line breaks.
 */
export async function linkFromOutbox(dataDir, to, path, timeoutMs = 10_000) {
  const outbox = join(dataDir, 'outbox');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const names = (await readdir(outbox).catch(() => [])).filter((n) => n.endsWith('.eml')).sort().reverse();
    for (const name of names) {
      const eml = await readFile(join(outbox, name), 'utf8');
      const head = eml.split(/\r?\n\r?\n/)[0];
      if (!new RegExp(`^to:.*${to.replace(/[.+]/g, '\\$&')}`, 'im').test(head)) continue;
      const m = new RegExp(`https?://[^\\s]+${path.replace(/\//g, '\\/')}\\?token=[A-Za-z0-9]+(?=\\r?\\n)`).exec(eml);
      if (m) return m[0];
    }
    if (Date.now() > deadline) throw new Error(`no message to ${to} with a ${path} link in ${outbox}`);
    await sleep(100);
  }
}
