'use strict';
// Registers one device with the official Azure IoT DPS Node device SDK over AMQP and prints
// exactly one JSON line on stdout: {"ok":true,"result":{...},"ms":N} or {"ok":false,"error":{...}}.
// Driven by amqp.test.mjs; the server's root CA is trusted through NODE_EXTRA_CA_CERTS.
//
// Arguments (all --name value):
//   --host IP --id-scope SCOPE --registration-id ID --transport amqp|amqpws
//   and either --symmetric-key KEY, or --cert FILE --key FILE
//   --timeout-ms N (default 60000)
const fs = require('fs');

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error('bad argument: ' + argv[i]);
    out[argv[i].slice(2)] = argv[i + 1];
  }
  return out;
}

let done = false;
function finish(obj) {
  if (done) return;
  done = true;
  process.stdout.write(JSON.stringify(obj) + '\n');
  process.exit(0);
}

function describeError(err) {
  if (!err) return { message: String(err) };
  const e = { name: err.name || (err.constructor && err.constructor.name) || 'Error', message: err.message || String(err) };
  for (const k of ['condition', 'description', 'info', 'code']) {
    if (err[k] !== undefined) e[k] = err[k];
  }
  if (err.amqpError) e.amqpError = describeError(err.amqpError);
  if (err.transportError) e.transportError = describeError(err.transportError);
  return e;
}

function main() {
  const a = parseArgs(process.argv.slice(2));
  const timeoutMs = parseInt(a['timeout-ms'] || '60000', 10);
  setTimeout(() => finish({ ok: false, error: { name: 'Timeout', message: 'no answer in ' + timeoutMs + ' ms' } }), timeoutMs).unref();

  const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
  const { Amqp, AmqpWs } = require('azure-iot-provisioning-device-amqp');
  let transport;
  if (a.transport === 'amqp') transport = new Amqp();
  else if (a.transport === 'amqpws') transport = new AmqpWs();
  else throw new Error('--transport must be amqp or amqpws');

  let security;
  if (a['symmetric-key']) {
    const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
    security = new SymmetricKeySecurityClient(a['registration-id'], a['symmetric-key']);
  } else if (a.cert && a.key) {
    const { X509Security } = require('azure-iot-security-x509');
    security = new X509Security(a['registration-id'], { cert: fs.readFileSync(a.cert, 'utf8'), key: fs.readFileSync(a.key, 'utf8') });
  } else {
    throw new Error('need --symmetric-key, or --cert and --key');
  }

  const started = Date.now();
  const client = ProvisioningDeviceClient.create(a.host, a['id-scope'], transport, security);
  client.register((err, result) => {
    if (err) finish({ ok: false, error: describeError(err), ms: Date.now() - started });
    else finish({ ok: true, result, ms: Date.now() - started });
  });
}

try {
  main();
} catch (e) {
  finish({ ok: false, error: describeError(e) });
}
