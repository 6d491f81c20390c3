// The official Azure IoT DPS Node device SDK (azure-iot-provisioning-device-amqp, pinned in
// package-lock.json), unmodified, against dps-amqp's driver behind the real TLS acceptor:
// the `fake_dps` example of crates/dps-amqp (a TEST device API; phase 1 of the AMQP work) on
// 127.0.0.100:5671 (AMQP over TLS) and 127.0.0.100:443 (AMQP over WebSockets, AMQPWSB10).
//
// Run: cargo build -p dps-amqp --example fake_dps && (cd tests/amqp && npm ci --ignore-scripts
//      && FAKE_DPS_BIN=../../target/debug/examples/fake_dps node --test)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync, execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash, randomBytes } from 'node:crypto';

const here = dirname(fileURLToPath(import.meta.url));
const HOST = '127.0.0.100';
const SCOPE = '0ne00AAA0A1';
const bin = process.env.FAKE_DPS_BIN || join(here, '..', '..', 'target', 'debug', 'examples', 'fake_dps');
const dir = mkdtempSync(join(tmpdir(), 'opendps-amqp-'));
const key = randomBytes(32).toString('base64');
let server;
let root;
const certs = {};

// A self-signed device certificate (CN = registration id) and the SHA-256 of its DER.
function deviceCert(name) {
  const cert = join(dir, `${name}.pem`);
  const keyFile = join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', keyFile, '-out', cert, '-days', '2', '-subj', `/CN=${name}`], { stdio: 'ignore' });
  const der = execFileSync('openssl', ['x509', '-in', cert, '-outform', 'DER']);
  return { cert, key: keyFile, sha256: createHash('sha256').update(der).digest('hex') };
}

before(async () => {
  certs.good = deviceCert('x509-device-1');
  certs.foreign = deviceCert('x509-device-2'); // enrolled under another thumbprint below
  const other = deviceCert('x509-device-2-enrolled');
  server = spawn(bin, [
    '--listen', `${HOST}:5671`, '--ws-listen', `${HOST}:443`, '--data-dir', dir, '--id-scope', SCOPE,
    '--symmetric-key', `sym-device-1=${key}`, '--symmetric-key', `throttled-1=${key}`, '--throttle-once', 'throttled-1',
    '--x509', `x509-device-1=${certs.good.sha256}`, '--x509', `x509-device-2=${other.sha256}`,
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  root = await new Promise((resolve, reject) => {
    let out = '';
    server.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/^ready (.+)$/m);
      if (m) resolve(m[1]);
    });
    server.on('exit', (code) => reject(new Error(`fake_dps exited with ${code}`)));
    setTimeout(() => reject(new Error('fake_dps did not become ready')), 30000).unref();
  });
});

after(() => {
  if (server) server.kill('SIGINT');
  rmSync(dir, { recursive: true, force: true });
});

function register(args) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [join(here, 'register.js'), '--host', HOST, '--id-scope', SCOPE, ...args],
      { env: { ...process.env, NODE_EXTRA_CA_CERTS: root }, timeout: 90000 },
      (err, stdout) => {
        const line = stdout.trim().split('\n').pop();
        try { resolve(JSON.parse(line)); } catch (e) { reject(err || new Error(`no result: ${stdout}`)); }
      });
  });
}

function assertAssigned(r, id) {
  assert.equal(r.ok, true, JSON.stringify(r.error));
  assert.equal(r.result.status, 'assigned');
  assert.equal(r.result.assignedHub, 'fake-hub.azure-devices.net');
  assert.equal(r.result.deviceId, id);
}

for (const transport of ['amqp', 'amqpws']) {
  test(`${transport}: symmetric key (SASL PLAIN) is assigned`, async () => {
    const r = await register(['--transport', transport, '--registration-id', 'sym-device-1', '--symmetric-key', key]);
    assertAssigned(r, 'sym-device-1');
    // register() returns only after the client's detach/end/close were answered.
    assert.ok(r.ms < 20000, `took ${r.ms} ms: are detach, end and close answered?`);
  });

  test(`${transport}: X.509 (no SASL, TLS client certificate) is assigned`, async () => {
    const r = await register(['--transport', transport, '--registration-id', 'x509-device-1', '--cert', certs.good.cert, '--key', certs.good.key]);
    assertAssigned(r, 'x509-device-1');
  });
}

test('amqp: a wrong symmetric key is refused', async () => {
  const r = await register(['--transport', 'amqp', '--registration-id', 'sym-device-1', '--symmetric-key', randomBytes(32).toString('base64')]);
  assert.equal(r.ok, false);
  assert.notEqual(r.error.name, 'Timeout', JSON.stringify(r.error));
});

test('amqp: an unknown device is refused', async () => {
  const r = await register(['--transport', 'amqp', '--registration-id', 'nobody', '--symmetric-key', key]);
  assert.equal(r.ok, false);
  assert.notEqual(r.error.name, 'Timeout', JSON.stringify(r.error));
});

test('amqp: a certificate that is not the enrolled one is refused', async () => {
  const r = await register(['--transport', 'amqp', '--registration-id', 'x509-device-2', '--cert', certs.foreign.cert, '--key', certs.foreign.key]);
  assert.equal(r.ok, false);
  assert.notEqual(r.error.name, 'Timeout', JSON.stringify(r.error));
  assert.match(JSON.stringify(r.error), /unauthorized/i);
});

test('amqp: throttled once (device-container-throttled, retry-after 1), then assigned', async () => {
  const r = await register(['--transport', 'amqp', '--registration-id', 'throttled-1', '--symmetric-key', key]);
  assertAssigned(r, 'throttled-1');
  assert.ok(r.ms >= 1000, `the retry-after of 1 s was honoured (${r.ms} ms)`);
});
